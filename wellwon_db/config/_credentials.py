"""What every connection of a database is opened with: credentials, TLS, session settings.

:func:`connect_params` turns a database's settings and one server's DSN into
:class:`ConnectParams`: the DSN with the ``PG_[<DB>_]POOL_SSL*`` settings
merged in (``_tls.py``), the password (the DSN's own, a :class:`PasswordFile`
or a provider callable, as asyncpg's ``password=`` accepts), server settings
(``default_transaction_read_only`` for read-only sessions) and, for messages,
where each came from (:class:`ConnectSources`: names and paths, never values).

:meth:`ConnectParams.connect` opens one connection with them:

* a password file is read again only when its stat (mtime, size, inode)
  changed, so rotating it needs no restart; connections already open keep
  working until they are replaced;
* when the server refuses the login, the file is read again once, and if the
  password changed the connection is tried once more;
* after a refusal (:func:`refusal_of`: credentials, certificate, TLS,
  a start-up parameter PgBouncer does not know), new connections fail at once
  with :class:`RecentlyRefused`, without reaching the server, for a holdoff of
  0.5 s doubling up to 10 s per refusal in a row; a changed password file ends
  it. No retry can fix a refusal, and a pool's callers must not turn it into
  a storm of logins.

What these errors become (``ConfigurationError`` naming the database, the
server and the variable, never an outage) is decided in ``pool/_failures.py``.
"""

from __future__ import annotations

import os
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, TypeAlias, TypeVar

import asyncpg

from wellwon_db.config._dsn import dsn_has_password
from wellwon_db.config._files import read_secret
from wellwon_db.config._registry import spec_for
from wellwon_db.config._settings import (
    DatabaseSettings,
    PasswordProvider,
    env_var_name,
    settings_class,
)
from wellwon_db.config._tls import TlsMode, dsn_query, merge_tls, tls_mode
from wellwon_db.errors import ConfigurationError

__all__ = [
    "ConnectParams",
    "ConnectSources",
    "PasswordFile",
    "PasswordProvider",
    "RecentlyRefused",
    "Refusal",
    "RefusalKind",
    "connect_params",
    "database_tls",
    "refusal_of",
]

#: What the server (or PgBouncer) refused: the login, its certificate (or
#: ours), TLS itself, a start-up parameter; or asyncpg refused the settings.
RefusalKind: TypeAlias = Literal[
    "authentication", "certificate", "tls", "startup_parameter", "settings"
]

_HOLDOFF_FIRST: Final = 0.5
_HOLDOFF_MAX: Final = 10.0
#: OpenSSL alerts a server sends when it rejects the client's certificate.
_CLIENT_CERTIFICATE_ALERTS: Final = ("UNKNOWN_CA", "BAD_CERTIFICATE", "CERTIFICATE_")

_C = TypeVar("_C", bound="asyncpg.Connection[Any]")


@dataclass(frozen=True, slots=True)
class Refusal:
    """A refused connection, as much of it as a message needs (no traceback, no secret).

    ``error`` is the original exception's type name, ``detail`` its message;
    ``verify_code`` is OpenSSL's verification result for a certificate
    (``X509_V_ERR_*``: 10 expired, 19/20 unknown CA, 62/64 wrong host), else ``None``.
    """

    kind: RefusalKind
    error: str
    detail: str
    verify_code: int | None = None


class RecentlyRefused(Exception):
    """A connection not attempted: the server refused the same login moments ago.

    ``refusal`` is that refusal, ``retry_in`` the seconds until the next attempt
    is allowed (sooner when the password file changes).
    """

    def __init__(self, refusal: Refusal, retry_in: float) -> None:
        super().__init__(f"{refusal.error}: {refusal.detail} (refused moments ago)")
        self.refusal = refusal
        self.retry_in = retry_in


def refusal_of(exc: BaseException) -> Refusal | None:
    """Whether ``exc``, raised by a connect, is a refusal no retry can fix; what it says."""
    if isinstance(exc, RecentlyRefused):
        return exc.refusal
    kind: RefusalKind | None = None
    verify_code = None
    if isinstance(exc, asyncpg.InvalidAuthorizationSpecificationError):
        kind = "authentication"  # SQLSTATE class 28: password, pg_hba.conf, certificate login
    elif isinstance(exc, ssl.SSLCertVerificationError):
        kind, verify_code = "certificate", exc.verify_code
    elif isinstance(exc, ssl.SSLError) and any(
        alert in (exc.reason or "") for alert in _CLIENT_CERTIFICATE_ALERTS
    ):
        kind = "certificate"  # the server refused our client certificate
    elif isinstance(exc, ConnectionError) and "rejected SSL upgrade" in str(exc):
        kind = "tls"
    elif isinstance(exc, asyncpg.ProtocolViolationError) and "startup parameter" in str(exc):
        kind = "startup_parameter"  # PgBouncer, SQLSTATE 08P01
    elif isinstance(exc, asyncpg.ClientConfigurationError):
        kind = "settings"
    if kind is None:
        return None
    detail = " ".join(str(getattr(exc, "verify_message", None) or exc).split())
    return Refusal(kind, type(exc).__name__, detail[:300] or "no detail", verify_code)


class PasswordFile:
    """A password kept in a file; call it for the password (asyncpg does, per connection).

    The file is read again only when its stat (modification time, size,
    inode) changed since the last read. A file that is missing or empty for
    a moment (mid-rotation) keeps the last password; before any password was
    read, that raises ``ConfigurationError`` naming ``variable`` and the path.
    The content never appears in an error, a log or a repr.
    """

    __slots__ = ("_stamp", "_value", "database", "generation", "path", "variable")

    def __init__(self, path: Path, variable: str, database: object) -> None:
        self.path = path
        self.variable = variable
        self.database = database
        #: Bumped whenever a read finds another password.
        self.generation = 0
        self._stamp: tuple[int, int, int, int] | None = None
        self._value: str | None = None

    def __repr__(self) -> str:
        return f"<PasswordFile {self.variable}={self.path}>"

    def stamp(self) -> tuple[int, int, int, int] | None:
        """The file's (mtime ns, size, inode, device), ``None`` when it cannot be seen."""
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev)

    def __call__(self) -> str:
        stamp = self.stamp()
        if self._value is not None and stamp is not None and stamp == self._stamp:
            return self._value
        return self._read(stamp)

    def reload(self) -> bool:
        """Read the file whatever its stat says; whether the password changed."""
        before = self._value
        return self._read(self.stamp()) != before

    def _read(self, stamp: tuple[int, int, int, int] | None) -> str:
        try:
            value = read_secret(self.path, self.variable, self.database)
        except ConfigurationError:
            if self._value is None:
                raise
            return self._value
        if value != self._value:
            self.generation += 1
        self._value, self._stamp = value, stamp
        return value


@dataclass(frozen=True, slots=True)
class ConnectSources:
    """Where a database's login and TLS settings come from: names and paths, never values.

    ``password`` describes the password's source in words, ``password_variable``
    is the variable to fix; likewise for the CA file. ``tls`` is the mode in force.
    """

    database: str
    dsn_variable: str
    password: str
    password_variable: str
    sslmode_variable: str
    sslrootcert: str
    sslrootcert_variable: str
    read_only_variable: str
    pgbouncer_variable: str
    tls: TlsMode

    @classmethod
    def generic(cls, database: object) -> ConnectSources:
        """The names of ``database``'s variables, when nothing else is known of its sources."""
        settings = settings_class(spec_for(str(database)))
        name = env_var_name(settings, "dsn")
        return cls(
            database=str(database),
            dsn_variable=name,
            password=(
                f"the DSN ({name}), {env_var_name(settings, 'password_file')} or "
                f"{env_var_name(settings, 'password_provider')}"
            ),
            password_variable=name,
            sslmode_variable=env_var_name(settings, "pool_sslmode"),
            sslrootcert=env_var_name(settings, "pool_sslrootcert"),
            sslrootcert_variable=env_var_name(settings, "pool_sslrootcert"),
            read_only_variable=env_var_name(settings, "pool_read_only"),
            pgbouncer_variable=env_var_name(settings, "pool_pgbouncer"),
            tls=TlsMode("unknown", "unknown", "none"),
        )


class ConnectParams:
    """The DSN, password, TLS and server settings of one server's connections.

    Made by :func:`connect_params` (or with a bare DSN, which asyncpg then
    reads alone). :meth:`connect` opens a connection; see the module
    docstring for re-reading the password and the holdoff after a refusal.
    """

    __slots__ = (
        "_holdoff",
        "_refused",
        "_refused_stamp",
        "_refused_until",
        "dsn",
        "password",
        "server_settings",
        "sources",
    )

    def __init__(
        self,
        dsn: str,
        *,
        password: PasswordFile | PasswordProvider | None = None,
        server_settings: dict[str, str] | None = None,
        sources: ConnectSources | None = None,
    ) -> None:
        self.dsn = dsn
        self.password = password
        self.server_settings = dict(server_settings or {})
        self.sources = sources
        self._refused: Refusal | None = None
        self._refused_until = 0.0
        self._refused_stamp: tuple[int, int, int, int] | None = None
        self._holdoff = 0.0

    def __repr__(self) -> str:
        return f"<ConnectParams {self.sources.database if self.sources else ''}>"

    async def connect(
        self,
        *,
        connection_class: type[_C],
        timeout: float,
        server_settings: dict[str, str] | None = None,
        **options: Any,
    ) -> _C:
        """``asyncpg.connect`` with these parameters; ``options`` are its other arguments.

        ``server_settings`` given here are sent too (these parameters' own
        win). Raises what asyncpg raises, and :class:`RecentlyRefused` during
        a holdoff; ``ConfigurationError`` when a password file was never readable.
        """
        self._check_holdoff()
        settings = {**(server_settings or {}), **self.server_settings}
        started = time.monotonic()
        password = self.password
        # Compared after a refusal: a concurrent connect may have read the new
        # password already, and this one was still refused with the old.
        generation = password.generation if isinstance(password, PasswordFile) else 0
        try:
            return self._accepted(await self._open(connection_class, timeout, settings, options))
        except Exception as exc:
            refusal = refusal_of(exc)
            if refusal is None:
                raise
            if not (
                refusal.kind == "authentication"
                and isinstance(password, PasswordFile)
                and (password.reload() or password.generation != generation)
            ):
                self._refuse(refusal)
                raise
        # Refused, but the file holds another password by now: try that once.
        remaining = max(timeout - (time.monotonic() - started), 0.1)
        try:
            return self._accepted(await self._open(connection_class, remaining, settings, options))
        except Exception as exc:
            refusal = refusal_of(exc)
            if refusal is not None:
                self._refuse(refusal)
            raise

    async def _open(
        self,
        connection_class: type[_C],
        timeout: float,
        server_settings: dict[str, str],
        options: dict[str, Any],
    ) -> _C:
        connection: _C = await asyncpg.connect(
            self.dsn,
            password=self.password,
            timeout=timeout,
            server_settings=server_settings,
            connection_class=connection_class,
            **options,
        )
        return connection

    def _check_holdoff(self) -> None:
        refusal = self._refused
        if refusal is None:
            return
        now = time.monotonic()
        if now >= self._refused_until:
            return  # one attempt may go through
        if isinstance(self.password, PasswordFile) and self.password.stamp() != (
            self._refused_stamp
        ):
            return  # a new password: worth trying at once
        raise RecentlyRefused(refusal, self._refused_until - now)

    def _refuse(self, refusal: Refusal) -> None:
        self._holdoff = (
            _HOLDOFF_FIRST if self._refused is None else min(self._holdoff * 2, _HOLDOFF_MAX)
        )
        self._refused = refusal
        self._refused_until = time.monotonic() + self._holdoff
        if isinstance(self.password, PasswordFile):
            self._refused_stamp = self.password.stamp()

    def _accepted(self, connection: _C) -> _C:
        self._refused = None
        return connection


def _tls_given(settings: DatabaseSettings) -> dict[str, tuple[str, str]]:
    """The TLS parameters the settings give: ``name -> (value, variable)``."""
    given = {}
    for name in ("sslmode", "sslrootcert", "sslcert", "sslkey"):
        value = getattr(settings, f"pool_{name}")
        if value is not None:
            given[name] = (str(value), env_var_name(type(settings), f"pool_{name}"))
    return given


def _dsn_variable(settings: DatabaseSettings) -> str:
    field = "dsn_file" if settings.dsn_file is not None else "dsn"
    return env_var_name(type(settings), field)


def database_tls(settings: DatabaseSettings, dsn: str) -> TlsMode:
    """The TLS mode the connections of ``settings``' database to ``dsn`` ask for."""
    given = _tls_given(settings)
    variable = _dsn_variable(settings)
    merged = merge_tls(dsn, variable, given, settings.database)
    return tls_mode(merged, variable, given.get("sslmode", ("", None))[1])


def connect_params(
    settings: DatabaseSettings, dsn: str, *, dsn_variable: str | None = None
) -> ConnectParams:
    """The :class:`ConnectParams` of ``settings``' database for the server at ``dsn``.

    ``dsn_variable`` names the variable ``dsn`` came from when it is not the
    database's DSN (the cache's LISTEN DSN). Reads the password file once, so
    that a missing or empty one fails now (``ConfigurationError`` naming the
    variable and the path). The settings were validated when loaded
    (conflicts, readable certificate files).
    """
    kind = type(settings)
    database = settings.database
    dsn_variable = dsn_variable or _dsn_variable(settings)
    given = _tls_given(settings)
    merged = merge_tls(dsn, dsn_variable, given, database)
    tls = tls_mode(merged, dsn_variable, given.get("sslmode", ("", None))[1])
    password: PasswordFile | PasswordProvider | None = None
    if settings.password_file is not None:
        variable = env_var_name(kind, "password_file")
        password = PasswordFile(settings.password_file, variable, database)
        password()
        described = f"{variable} ({settings.password_file})"
    elif settings.password_provider is not None:
        variable = env_var_name(kind, "password_provider")
        password = settings.password_provider
        described = f"{variable} ({_name_of(password)})"
    elif dsn_has_password(dsn):
        variable, described = dsn_variable, f"the password in {dsn_variable}"
    else:
        variable = env_var_name(kind, "password_file")
        described = (
            f"no password ({variable} is unset and {dsn_variable} holds none; asyncpg then "
            "tries PGPASSWORD and ~/.pgpass)"
        )
    rootcert_variable = env_var_name(kind, "pool_sslrootcert")
    if "sslrootcert" in given:
        rootcert = f"{rootcert_variable} ({settings.pool_sslrootcert})"
    elif "sslrootcert" in dsn_query(merged):
        rootcert, rootcert_variable = f"the sslrootcert in {dsn_variable}", dsn_variable
    else:
        rootcert = f"no CA file ({rootcert_variable} is unset)"
    sources = ConnectSources(
        database=str(database),
        dsn_variable=dsn_variable,
        password=described,
        password_variable=variable,
        sslmode_variable=env_var_name(kind, "pool_sslmode"),
        sslrootcert=rootcert,
        sslrootcert_variable=rootcert_variable,
        read_only_variable=env_var_name(kind, "pool_read_only"),
        pgbouncer_variable=env_var_name(kind, "pool_pgbouncer"),
        tls=tls,
    )
    server_settings = {"default_transaction_read_only": "on"} if settings.pool_read_only else {}
    return ConnectParams(
        merged, password=password, server_settings=server_settings, sources=sources
    )


def _name_of(provider: object) -> str:
    module = getattr(provider, "__module__", None) or "?"
    name = getattr(provider, "__qualname__", None) or type(provider).__name__
    return f"{module}:{name}"
