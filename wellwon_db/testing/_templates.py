"""A fresh set of databases per test, copied from templates set up once.

:class:`TemplateDatabases` creates one template database per database name on
a :class:`PostgresServer` and runs its set-up there once (SQL, a ``.sql``
file, or a function given the template's DSN, for a migration tool). Each
:meth:`~TemplateDatabases.clone` then copies every template with
``CREATE DATABASE ... TEMPLATE``: every test starts from the same state and
commits for real, so transactions, isolation levels, LISTEN/NOTIFY and
concurrent connections behave as in production.

A copy costs what copying a few hundred small files costs on the server's
file system (docs/testing.md has the numbers), so the databases can live in
a tablespace on a RAM file system, the copies for the next test are made in
the background while the current test runs, and dropping a test's databases
never holds the next test up. All of it runs on one helper thread with its
own event loop and one superuser connection: the calls are synchronous and
safe from any thread or event loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import inspect
import itertools
import os
import shutil
import tempfile
import threading
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, TypeAlias, TypeVar

import asyncpg

from wellwon_db.config._registry import database_name, spec_for
from wellwon_db.errors import ConfigurationError
from wellwon_db.testing._server import PostgresServer, _run_as

__all__ = ["DatabaseSetup", "TemplateDatabases", "ram_directory"]

_T = TypeVar("_T")

#: What a template starts with: nothing (``None``), SQL text, a ``.sql`` file,
#: or a function called with the template's DSN (sync or async).
DatabaseSetup: TypeAlias = str | Path | Callable[[str], Any] | None

#: ``CREATE DATABASE ... STRATEGY`` exists from PostgreSQL 15, ``DROP ... WITH (FORCE)`` from 13.
_STRATEGY_VERSION = 150000
_FORCE_VERSION = 130000
#: A RAM file system smaller than this (a container's 64 MB ``/dev/shm``) is not used.
_MIN_RAM_FREE = 1 << 30


def ram_directory() -> Path | None:
    """``/dev/shm`` if it is a writable RAM file system with 1 GiB free, else ``None``."""
    candidate = Path("/dev/shm")
    try:
        usable = (
            os.access(candidate, os.W_OK) and shutil.disk_usage(candidate).free >= _MIN_RAM_FREE
        )
    except OSError:
        return None
    return candidate if usable else None


class TemplateDatabases:
    """Templates set up once on ``server``; :meth:`clone` gives fresh copies of all of them.

    ``setup`` maps database names (``"main"``, ``"reference"``, your own) to
    what each template starts with (:data:`DatabaseSetup`). Replica databases
    cannot be copied (a replica is another server: see
    ``PostgresServer.standby_of``); their names raise ``ConfigurationError``.
    ``strategy`` is ``CREATE DATABASE``'s (``"file_copy"`` or
    ``"wal_log"``; ignored before PostgreSQL 15). With ``tablespace_dir``
    (e.g. :func:`ram_directory`), templates and copies live in a tablespace
    in a new directory there, removed by :meth:`close`.

    Nothing runs until the first :meth:`clone`; :meth:`close` drops what is
    left and stops the helper thread.
    """

    def __init__(
        self,
        server: PostgresServer,
        setup: Mapping[str, DatabaseSetup],
        *,
        strategy: str = "file_copy",
        prefix: str = "wellwon",
        tablespace_dir: Path | None = None,
    ) -> None:
        if strategy not in ("file_copy", "wal_log"):
            raise ValueError(f"strategy must be 'file_copy' or 'wal_log', not {strategy!r}")
        self._setup: dict[str, DatabaseSetup] = {}
        for key, value in setup.items():
            name = database_name(key)
            if spec_for(name).replica_of is not None:
                raise ConfigurationError(
                    f"{name} is a replica database: it cannot be copied from a template; "
                    "run a standby with PostgresServer.standby_of(primary) instead"
                )
            self._setup[str(name)] = value
        if not self._setup:
            raise ConfigurationError("no databases to set up: give at least one name")
        self.server = server
        self.strategy = strategy
        self._prefix = prefix
        self._tablespace_dir = tablespace_dir
        #: The tablespace's directory, once made.
        self.tablespace_location: Path | None = None
        self._counter = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._admin: asyncpg.Connection[Any] | None = None
        self._version = 0
        self._ready = False
        self._setup_error: BaseException | None = None
        # The lock guards the futures below across threads; the admin lock
        # serialises the helper loop's coroutines on the one connection.
        self._lock = threading.Lock()
        self._admin_lock = asyncio.Lock()
        self._next: concurrent.futures.Future[dict[str, str]] | None = None
        self._pending: set[concurrent.futures.Future[None]] = set()
        self._closed = False

    def __repr__(self) -> str:
        return f"<TemplateDatabases {', '.join(self._setup)} on {self.server!r}>"

    @property
    def databases(self) -> tuple[str, ...]:
        """The database names, in the order given."""
        return tuple(self._setup)

    def template_name(self, database: str) -> str:
        """The template's name on the server (``wellwon_template_main``)."""
        return f"{self._prefix}_template_{database_name(database)}"

    # -- the calls ------------------------------------------------------------

    def clone(self) -> dict[str, str]:
        """Fresh copies of every template: database name -> DSN of its copy.

        The first call sets the templates up (a failing set-up raises, with a
        note naming the database; later calls raise at once). The copies for
        the next call are started before this one returns.
        """
        with self._lock:
            if self._closed:
                raise RuntimeError(f"{self!r} is closed")
            upcoming, self._next = self._next, None
            if upcoming is None:
                upcoming = self._submit(self._aclone())
            # The next test's copies are made while this test runs.
            self._next = self._submit(self._aclone())
        return upcoming.result()

    def drop(self, dsns: Mapping[str, str]) -> None:
        """Drop the copies :meth:`clone` returned, in the background (open sessions are ended)."""
        with self._lock:
            if self._closed:
                return
            future = self._submit(self._adrop(_names(dsns)))
            self._pending.add(future)
            future.add_done_callback(self._pending.discard)

    def close(self) -> None:
        """Drop the copies made ahead and the tablespace; stop the helper thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            upcoming, self._next = self._next, None
            pending = list(self._pending)
        if self._loop is not None:
            if upcoming is not None:
                # A failed copy left nothing to drop.
                with contextlib.suppress(Exception):
                    pending.append(self._submit(self._adrop(_names(upcoming.result()))))
            concurrent.futures.wait(pending, timeout=60)
            with contextlib.suppress(Exception):
                self._submit(self._aclose()).result(timeout=60)
            self._loop.call_soon_threadsafe(self._loop.stop)
            assert self._thread is not None
            self._thread.join(timeout=30)
            self._loop.close()
        if self.tablespace_location is not None:
            shutil.rmtree(self.tablespace_location, ignore_errors=True)

    # -- on the helper thread ------------------------------------------------

    def _submit(self, coro: Awaitable[_T]) -> concurrent.futures.Future[_T]:
        if self._loop is None:
            loop = asyncio.new_event_loop()
            thread = threading.Thread(
                target=loop.run_forever, name="wellwon_db-templates", daemon=True
            )
            thread.start()
            self._loop, self._thread = loop, thread
        return asyncio.run_coroutine_threadsafe(_as_coroutine(coro), self._loop)

    async def _connection(self) -> asyncpg.Connection[Any]:
        if self._admin is None or self._admin.is_closed():
            self._admin = await asyncpg.connect(self.server.dsn(), timeout=30)
            self._version = int(await self._admin.fetchval("SHOW server_version_num"))
        return self._admin

    async def _aclone(self) -> dict[str, str]:
        async with self._admin_lock:
            if self._setup_error is not None:
                raise RuntimeError(
                    "the template databases could not be set up (the first test that used "
                    "them shows why)"
                ) from self._setup_error
            admin = await self._connection()
            if not self._ready:
                try:
                    await self._set_up(admin)
                except BaseException as exc:
                    self._setup_error = exc
                    raise
                self._ready = True
            number = next(self._counter)
            strategy = f" STRATEGY {self.strategy}" if self._version >= _STRATEGY_VERSION else ""
            dsns: dict[str, str] = {}
            for database in self._setup:
                copy = f"{self._prefix}_{number}_{database}"
                await admin.execute(
                    f"CREATE DATABASE {_quote(copy)} "
                    f"TEMPLATE {_quote(self.template_name(database))}{strategy}"
                )
                dsns[database] = self.server.dsn(copy)
            return dsns

    async def _set_up(self, admin: asyncpg.Connection[Any]) -> None:
        tablespace = ""
        if self._tablespace_dir is not None:
            tablespace = f" TABLESPACE {_quote(self._tablespace_name)}"
            await self._create_tablespace(admin, self._tablespace_dir)
        for database, setup in self._setup.items():
            template = self.template_name(database)
            await admin.execute(f"DROP DATABASE IF EXISTS {_quote(template)}")
            await admin.execute(f"CREATE DATABASE {_quote(template)}{tablespace}")
            try:
                await _run_setup(setup, self.server.dsn(template))
            except BaseException as exc:
                exc.add_note(f"while setting up the {database} database's template {template}")
                raise
            # A connection the set-up left open would make every copy fail.
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = $1 AND pid <> pg_backend_pid()",
                template,
            )
            await admin.execute(f"ALTER DATABASE {_quote(template)} WITH ALLOW_CONNECTIONS false")

    @property
    def _tablespace_name(self) -> str:
        return f"{self._prefix}_space"

    async def _create_tablespace(self, admin: asyncpg.Connection[Any], parent: Path) -> None:
        location = Path(tempfile.mkdtemp(prefix="wellwon_db-tablespace-", dir=parent))
        self.tablespace_location = location
        account = _run_as()  # the server's account must own the directory
        if account is not None:
            os.chown(location, account.pw_uid, account.pw_gid)
        literal = str(location).replace("'", "''")
        await admin.execute(
            f"CREATE TABLESPACE {_quote(self._tablespace_name)} LOCATION '{literal}'"
        )

    async def _adrop(self, names: list[str]) -> None:
        async with self._admin_lock:
            admin = await self._connection()
            force = " WITH (FORCE)" if self._version >= _FORCE_VERSION else ""
            for name in names:
                await admin.execute(f"DROP DATABASE IF EXISTS {_quote(name)}{force}")

    async def _aclose(self) -> None:
        try:
            if self.tablespace_location is not None and self.server.is_running():
                # The tablespace must be empty before it goes.
                await self._adrop([self.template_name(name) for name in self._setup])
                admin = await self._connection()
                await admin.execute(f"DROP TABLESPACE IF EXISTS {_quote(self._tablespace_name)}")
        finally:
            if self._admin is not None:
                await self._admin.close()
                self._admin = None


async def _as_coroutine(awaitable: Awaitable[_T]) -> _T:
    return await awaitable


async def _run_setup(setup: DatabaseSetup, dsn: str) -> None:
    if setup is None:
        return
    if callable(setup):
        if inspect.iscoroutinefunction(setup):
            await setup(dsn)
            return
        # On a thread of its own: a sync set-up may run an event loop (asyncio.run) itself.
        result = await asyncio.to_thread(setup, dsn)
        if inspect.isawaitable(result):
            await result
        return
    sql = setup.read_text() if isinstance(setup, Path) else setup
    connection = await asyncpg.connect(dsn, timeout=30)
    try:
        await connection.execute(sql)
    finally:
        await connection.close()


def _names(dsns: Mapping[str, str]) -> list[str]:
    return [dsn.rsplit("/", 1)[-1] for dsn in dsns.values()]


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'
