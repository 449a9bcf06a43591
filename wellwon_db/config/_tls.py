"""TLS parameters of a DSN and of the ``PG_[<DB>_]POOL_SSL*`` settings, merged and checked.

asyncpg reads ``sslmode``, ``sslrootcert``, ``sslcert`` and ``sslkey`` from
the DSN's query and applies libpq's rules to them (a new TLS context per
connection, so renewed certificate files are picked up). The settings are
therefore added to the DSN handed to asyncpg, never shown; a parameter set in
both places with different values is an error naming both.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal, TypeAlias
from urllib.parse import parse_qsl, quote, urlsplit

from wellwon_db.errors import ConfigurationError

__all__ = [
    "SSL_MODES",
    "SslMode",
    "TlsMode",
    "Verification",
    "check_tls_files",
    "dsn_query",
    "merge_tls",
    "tls_mode",
]

#: libpq's ``sslmode`` values, weakest first.
SslMode: TypeAlias = Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]
SSL_MODES: Final = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")

#: What a client checks of the server's certificate: nothing, its CA, or its CA and host name.
Verification: TypeAlias = Literal["none", "ca", "full"]


@dataclass(frozen=True, slots=True)
class TlsMode:
    """The TLS a database's connections ask for, and where that was set.

    ``sslmode`` is libpq's mode in force; ``origin`` names where it came
    from (a variable, the DSN, ``PGSSLMODE`` or asyncpg's default
    ``prefer``); ``verification`` what is checked of the server's certificate.
    """

    sslmode: str
    origin: str
    verification: Verification


def dsn_query(dsn: str) -> dict[str, str]:
    """The DSN's query parameters; the last of a repeated one wins, as in asyncpg."""
    try:
        return dict(parse_qsl(urlsplit(dsn).query, keep_blank_values=True))
    except ValueError:
        return {}


def merge_tls(
    dsn: str, dsn_variable: str, given: Mapping[str, tuple[str, str]], database: object
) -> str:
    """``dsn`` with the TLS parameters of ``given`` (``name -> (value, variable)``) added.

    Raises ``ConfigurationError`` naming the variable and ``dsn_variable``
    when the DSN already sets a parameter to another value (the DSN's value
    is not shown: it may come from a secret file).
    """
    present = dsn_query(dsn)
    additions = []
    for name, (value, variable) in given.items():
        if name not in present:
            additions.append(f"{name}={quote(value, safe='/')}")
        elif present[name] != value:
            raise ConfigurationError(
                f"{variable}={value} and the {name} in {dsn_variable} disagree for the "
                f"{database} database; set {name} in one place only",
                env_var=variable,
            )
    if not additions:
        return dsn
    # Appended to the text as it is: re-assembling a parsed URL can change
    # multi-host and socket DSNs.
    base, hash_sign, fragment = dsn.partition("#")
    separator = "&" if "?" in base else "?"
    return base + separator + "&".join(additions) + hash_sign + fragment


def tls_mode(dsn: str, dsn_variable: str, setting_variable: str | None) -> TlsMode:
    """The TLS ``dsn`` (already merged with the settings) asks for.

    ``setting_variable`` names ``PG_[<DB>_]POOL_SSLMODE`` when that setting
    supplied the mode. Without a mode in the DSN, asyncpg reads
    ``PGSSLMODE``, else uses ``prefer`` (TLS when offered, nothing checked).
    """
    query = dsn_query(dsn)
    if "sslmode" in query:
        mode = query["sslmode"]
        origin = setting_variable or f"the sslmode in {dsn_variable}"
    elif os.environ.get("PGSSLMODE"):
        mode, origin = os.environ["PGSSLMODE"], "PGSSLMODE"
    else:
        mode, origin = "prefer", "the default"
    rootcert = query.get("sslrootcert") or os.environ.get("PGSSLROOTCERT")
    verification: Verification = "none"
    if mode == "verify-full":
        verification = "full"
    elif mode == "verify-ca" or (mode == "require" and rootcert):
        # libpq's rule, which asyncpg follows: require with a root
        # certificate checks the CA.
        verification = "ca"
    return TlsMode(mode, origin, verification)


def check_tls_files(files: Mapping[str, tuple[str, str]], database: object) -> None:
    """Load the certificate files once, so that a bad one fails at start-up, not per connection.

    ``files`` maps ``sslrootcert``, ``sslcert``, ``sslkey`` to ``(path, the
    variable that set it)``. Raises ``ConfigurationError`` naming both.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if "sslrootcert" in files:
        path, variable = files["sslrootcert"]
        try:
            context.load_verify_locations(cafile=path)
        except (OSError, ssl.SSLError) as exc:
            raise _file_error(
                "sslrootcert", path, variable, "a PEM file of CA certificates", exc, database
            ) from None
    if "sslcert" in files:
        path, variable = files["sslcert"]
        key = files["sslkey"][0] if "sslkey" in files else None
        try:
            context.load_cert_chain(path, keyfile=key, password=lambda: "")
        except (OSError, ssl.SSLError) as exc:
            raise _file_error(
                "sslcert",
                path,
                variable,
                "a PEM client certificate with its unencrypted key",
                exc,
                database,
            ) from None


def _file_error(
    name: str, path: str, variable: str, expected: str, exc: BaseException, database: object
) -> ConfigurationError:
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return ConfigurationError(
        f"the {name} file {Path(path)} of the {database} database (set by {variable}) is not "
        f"{expected}: {reason}",
        env_var=variable,
    )
