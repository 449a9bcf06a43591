"""A throwaway PgBouncer in front of a :class:`~wellwon_db.testing.PostgresServer`.

:class:`PgBouncerServer` writes a ``pgbouncer.ini`` into a temporary
directory and runs the ``pgbouncer`` binary on a free loopback port, in
transaction pooling mode by default: what production deployments behind
PgBouncer look like, so tests can show which driver features survive it
(named prepared statements, for one, do not). Running as root, PgBouncer runs
as the same unprivileged account as the PostgreSQL servers (``WELLWON_PG_USER``,
default ``nobody``): it refuses to run as root.

Authentication is ``trust`` on loopback, as on the servers: a client may log
in as any of the ``users`` given (default ``postgres``), with no password, and
PgBouncer logs in to the server as the same user. Every database of the
server is reachable through it under its own name.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Literal
from urllib.parse import quote

from wellwon_db.testing._server import (
    PostgresServer,
    _chown,
    _free_port,
    _run_as,
    _subprocess_kwargs,
)

__all__ = ["PgBouncerNotFoundError", "PgBouncerServer", "find_pgbouncer"]

PoolMode = Literal["session", "transaction", "statement"]

# The SSLRequest message: PgBouncer answers it with one byte ('N' or 'S') once
# it is listening, before any authentication.
_SSL_REQUEST = struct.pack("!ii", 8, 80877103)
# Where Debian's package installs it, often off a non-root user's PATH.
_SYSTEM_BINARY = Path("/usr/sbin/pgbouncer")


class PgBouncerNotFoundError(RuntimeError):
    """No ``pgbouncer`` binary was found. The message says how to get one."""


def find_pgbouncer() -> Path:
    """The ``pgbouncer`` executable.

    Looks at ``WELLWON_PGBOUNCER``, then ``PATH``, then ``/usr/sbin/pgbouncer``.
    Raises :class:`PgBouncerNotFoundError`.
    """
    if explicit := os.environ.get("WELLWON_PGBOUNCER"):
        if os.access(explicit, os.X_OK) and Path(explicit).is_file():
            return Path(explicit)
        raise PgBouncerNotFoundError(
            f"WELLWON_PGBOUNCER={explicit} is not an executable file; "
            "point it at the pgbouncer binary or unset it"
        )
    if on_path := shutil.which("pgbouncer"):
        return Path(on_path)
    if os.access(_SYSTEM_BINARY, os.X_OK):
        return _SYSTEM_BINARY
    raise PgBouncerNotFoundError(
        "no pgbouncer binary found; install it (Debian/Ubuntu: "
        "`apt-get install pgbouncer`) or set WELLWON_PGBOUNCER to its path"
    )


class PgBouncerServer:
    """PgBouncer on a free loopback port, pooling connections to ``target``.

    ``start()`` writes the configuration, starts PgBouncer and waits until it
    accepts connections; ``stop()`` shuts it down (clients are disconnected),
    ``start()`` again brings it back on the same port; ``cleanup()`` (or
    leaving the ``with`` block) stops it and deletes its files. The
    constructor does no I/O.

    ``default_pool_size`` bounds the server connections per database and
    user; ``max_client_conn`` the client connections in all. ``users`` may
    log in (and administer the ``pgbouncer`` console database). ``settings``
    adds or overrides ``[pgbouncer]`` options (strings, as in the ini file).

    PgBouncer refuses a connection whose start-up parameters it does not
    track ("unsupported startup parameter"): asyncpg's own are fine, and so
    is ``application_name``, but ``server_settings`` such as
    ``statement_timeout``, ``search_path`` or ``jit`` are not; only
    ``extra_float_digits`` is ignored (add more with
    ``settings={"ignore_startup_parameters": ...}``, knowing they then do
    not apply).
    """

    def __init__(
        self,
        target: PostgresServer,
        *,
        pool_mode: PoolMode = "transaction",
        default_pool_size: int = 20,
        max_client_conn: int = 500,
        users: Iterable[str] = ("postgres",),
        settings: Mapping[str, str] | None = None,
        binary: Path | None = None,
    ) -> None:
        self.target = target
        self.pool_mode = pool_mode
        self.default_pool_size = default_pool_size
        self.max_client_conn = max_client_conn
        self.users = tuple(users)
        self._settings = dict(settings or {})
        self._binary = binary
        self._process: subprocess.Popen[bytes] | None = None
        self._base: Path | None = None
        self._account = _run_as()
        self.host = "127.0.0.1"
        self.port = 0

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        return f"<PgBouncerServer {self.pool_mode} {self.host}:{self.port} {state}>"

    @property
    def config_file(self) -> Path:
        """The ``pgbouncer.ini`` written by the last ``start()``."""
        if self._base is None:
            raise RuntimeError(f"{self!r} was never started")
        return self._base / "pgbouncer.ini"

    @property
    def log_file(self) -> Path:
        """PgBouncer's log (its standard output and error)."""
        return self.config_file.parent / "pgbouncer.log"

    def dsn(self, database: str = "postgres", *, user: str = "postgres") -> str:
        """A DSN for ``database`` of the target server, through PgBouncer."""
        return f"postgresql://{quote(user, safe='')}@{self.host}:{self.port}/{database}"

    def is_running(self) -> bool:
        """Whether the PgBouncer process is alive."""
        return self._process is not None and self._process.poll() is None

    def start(self, timeout: float = 10.0) -> PgBouncerServer:
        """Write the configuration, start PgBouncer and wait until it accepts connections.

        Raises :class:`PgBouncerNotFoundError` without the binary,
        ``RuntimeError`` when the target is not started or PgBouncer exits
        (with its log), ``TimeoutError`` when it does not listen in time.
        """
        if self.is_running():
            return self
        if not self.target.port:
            raise RuntimeError(f"{self.target!r} must be started before PgBouncer")
        binary = self._binary or find_pgbouncer()
        if self._base is None:
            self._base = Path(tempfile.mkdtemp(prefix="wellwon_db-pgbouncer-"))
            os.chmod(self._base, 0o755)
        if not self.port:
            self.port = _free_port()
        self._write_config()
        log = open(self.log_file, "ab")  # noqa: SIM115 (owned by the process)
        _chown(self.log_file, self._account)
        self._process = subprocess.Popen(
            [str(binary), str(self.config_file)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            **_subprocess_kwargs(self._account),
        )
        log.close()
        self._wait_ready(timeout)
        return self

    def _write_config(self) -> None:
        base = self.config_file.parent
        auth_file = base / "userlist.txt"
        auth_file.write_text("".join(f'"{user}" ""\n' for user in self.users))
        options = {
            "listen_addr": self.host,
            "listen_port": str(self.port),
            # No Unix socket: it would land in /tmp under the port's name.
            "unix_socket_dir": "",
            "auth_type": "trust",
            "auth_file": str(auth_file),
            "pool_mode": self.pool_mode,
            "default_pool_size": str(self.default_pool_size),
            "max_client_conn": str(self.max_client_conn),
            # Sent by some drivers (not asyncpg); harmless to drop, unlike
            # statement_timeout and friends, which are better refused than lost.
            "ignore_startup_parameters": "extra_float_digits",
            # A restarted target is found again within a second, not 15.
            "server_login_retry": "1",
            "admin_users": ",".join(self.users),
            **self._settings,
        }
        lines = [
            "[databases]",
            f"* = host={self.target.host} port={self.target.port}",
            "",
            "[pgbouncer]",
            *(f"{key} = {value}" for key, value in options.items()),
        ]
        self.config_file.write_text("\n".join(lines) + "\n")
        for path in (base, self.config_file, auth_file):
            _chown(path, self._account)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            process = self._process
            if process is not None and process.poll() is not None:
                raise RuntimeError(
                    f"pgbouncer exited with {process.returncode}; "
                    f"log:\n{self.log_file.read_text(errors='replace')[-3000:]}"
                )
            if self._answers():
                return
            time.sleep(0.02)
        self.kill()
        raise TimeoutError(f"pgbouncer not listening on {self.host}:{self.port} within {timeout}s")

    def _answers(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=1.0) as sock:
                sock.sendall(_SSL_REQUEST)
                return sock.recv(1) in (b"N", b"S")
        except OSError:
            return False

    def stop(self, timeout: float = 10.0) -> None:
        """Shut down at once (clients are disconnected) and wait; killed after ``timeout`` s.

        Up to PgBouncer 1.22 SIGTERM is an immediate shutdown; from 1.23 on
        the first SIGTERM waits for clients to leave and a second one is
        immediate, hence a second SIGTERM when the first did not do.
        """
        process = self._process
        if process is None or process.poll() is not None:
            return
        deadline = time.monotonic() + timeout
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(min(0.5, timeout))
            return
        except subprocess.TimeoutExpired:
            pass
        # Not sent with the first: two pending signals of one kind are delivered as one.
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """Kill PgBouncer (SIGKILL): its connections drop at once, as in a crash."""
        process = self._process
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()

    def cleanup(self) -> None:
        """Stop PgBouncer and delete its files."""
        self.stop()
        if self._base is not None:
            shutil.rmtree(self._base, ignore_errors=True)
            self._base = None

    def __enter__(self) -> PgBouncerServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.cleanup()
