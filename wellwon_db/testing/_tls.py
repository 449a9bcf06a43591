"""Throwaway certificates for TLS tests, made with the ``openssl`` command.

:func:`make_certificates` writes a certificate authority, a server
certificate it signed (valid for the host names given), a client
certificate for certificate authentication, and a second, unrelated
authority (what a client trusting the wrong CA holds). Keys are P-256 EC
keys, unencrypted; everything is valid for two days. Never use them outside
tests.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["TlsFiles", "make_certificates"]


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """The PEM files :func:`make_certificates` wrote.

    ``ca`` signed ``server_cert`` and ``client_cert``; ``other_ca`` signed
    nothing here (a client that trusts only it refuses the server).
    """

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path


def make_certificates(
    directory: Path,
    *,
    hosts: Sequence[str] = ("localhost",),
    client: str = "app",
) -> TlsFiles:
    """Write a CA, a server certificate for ``hosts`` and a client one for role ``client``.

    ``hosts`` are DNS names or IP addresses (the server certificate's subject
    alternative names). Raises ``RuntimeError`` when ``openssl`` is missing or fails.
    """
    openssl = shutil.which("openssl")
    if openssl is None:
        raise RuntimeError("the openssl command is needed to make test certificates")
    directory.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        result = subprocess.run(
            [openssl, *args], capture_output=True, text=True, check=False, cwd=directory
        )
        if result.returncode != 0:
            raise RuntimeError(f"openssl {args[0]} failed: {result.stderr.strip()}")

    key_options = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    for name, subject in (("ca", "wellwon_db test CA"), ("other-ca", "unrelated test CA")):
        run(
            "req", "-x509", *key_options, "-keyout", f"{name}.key", "-out", f"{name}.crt",
            "-days", "2", "-subj", f"/CN={subject}",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        )  # fmt: skip
    names = ",".join(f"IP:{h}" if h.replace(".", "").isdigit() or ":" in h else f"DNS:{h}"
                     for h in hosts)  # fmt: skip
    for name, subject, usage, extra in (
        ("server", hosts[0], "serverAuth", f"subjectAltName={names}\n"),
        ("client", client, "clientAuth", ""),
    ):
        (directory / f"{name}.ext").write_text(
            f"{extra}basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
            f"extendedKeyUsage={usage}\nsubjectKeyIdentifier=hash\n"
            "authorityKeyIdentifier=keyid,issuer\n"
        )
        run(
            "req", *key_options, "-keyout", f"{name}.key", "-out", f"{name}.csr",
            "-subj", f"/CN={subject}",
        )  # fmt: skip
        run(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", f"{name}.crt", "-days", "2",
            "-extfile", f"{name}.ext",
        )  # fmt: skip
    for key in directory.glob("*.key"):
        key.chmod(0o600)  # libpq and asyncpg users expect private keys to be private
    return TlsFiles(
        ca=directory / "ca.crt",
        server_cert=directory / "server.crt",
        server_key=directory / "server.key",
        client_cert=directory / "client.crt",
        client_key=directory / "client.key",
        other_ca=directory / "other-ca.crt",
    )
