"""What every new connection of a pool is set up with: JSON codecs, server settings, an init hook.

A pool runs :meth:`ConnectionPreparation.__call__` once on each connection it
opens, right after connecting and before the connection is handed out or
counted as idle, so every connection of the pool (the first, the ones opened
under load, the replacements of lost or retired ones) answers alike.

Three parts, in this order:

1. ``server_settings``: sent with the connection's start-up message (not
   run here, see :attr:`ConnectionPreparation.server_settings`). They are
   the session's defaults, so the pool's reset (``RESET ALL``) returns to
   them; a ``SET`` in an init hook is undone by the first reset.
2. the JSON codec of ``PG_[<DB>_]POOL_JSON_CODEC``: ``text`` (asyncpg's own
   behaviour, ``str`` both ways) installs nothing; ``python`` installs
   codecs for ``json`` and ``jsonb`` that decode with :func:`json.loads`
   and encode with :func:`json.dumps`.
3. the application's init hook (``ConnectionSetup.init``): type codecs,
   prepared statements, anything per connection. It runs after the JSON
   codec, so a codec it sets for ``json``/``jsonb`` wins.

A failure in any part closes the connection and reaches whoever asked for
it (start-up, or the call that needed a new connection), with a note naming
the database's connection set-up.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final, Literal, TypeAlias

import asyncpg

from wellwon_db.config._registry import database_name, is_declared
from wellwon_db.errors import ConfigurationError

__all__ = [
    "ConnectionInit",
    "ConnectionPreparation",
    "ConnectionSetup",
    "JsonCodec",
    "connection_setup_for",
]

#: ``await init(connection)`` on every new connection of a pool.
ConnectionInit: TypeAlias = Callable[["asyncpg.Connection[Any]"], Awaitable[None]]
#: ``text``: json/jsonb values are ``str`` (asyncpg's default); ``python``: decoded objects.
JsonCodec: TypeAlias = Literal["text", "python"]

logger = logging.getLogger("wellwon_db.pool")

#: Settings the pool sets itself, from its own variables.
_RESERVED_SETTINGS: Final = {"application_name": "PG_[<DB>_]POOL_APPLICATION_NAME"}


def _encode_json(value: object) -> str:
    # Compact separators: what the server stores for ``json`` is the text as sent.
    return json.dumps(value, separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class ConnectionSetup:
    """What an application adds to every new connection of one database.

    ``init``: ``await init(connection)`` on each new connection (type codecs,
    prepared statements). ``server_settings``: run-time parameters sent when
    connecting (``{"timezone": "UTC", "search_path": "app, public"}``); they
    survive the pool's reset, unlike a ``SET`` in ``init``. Raises
    ``ConfigurationError`` for a non-callable ``init`` or settings that are
    not strings, and for ``application_name`` (set it with
    ``PG_[<DB>_]POOL_APPLICATION_NAME``).
    """

    init: ConnectionInit | None = None
    server_settings: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.init is not None and not callable(self.init):
            raise ConfigurationError(
                f"ConnectionSetup.init must be an async function taking the connection, got "
                f"{type(self.init).__name__}"
            )
        for name, value in self.server_settings.items():
            if not isinstance(name, str) or not isinstance(value, str) or not name:
                raise ConfigurationError(
                    "ConnectionSetup.server_settings maps setting names to string values, got "
                    f"{name!r}: {type(value).__name__}"
                )
            if name.lower() in _RESERVED_SETTINGS:
                raise ConfigurationError(
                    f"{name} is set by the pool: use {_RESERVED_SETTINGS[name.lower()]}",
                    env_var=None,
                )
        # Frozen for real: the caller's dict may change after it was given.
        object.__setattr__(self, "server_settings", MappingProxyType(dict(self.server_settings)))


def connection_setup_for(
    given: object, database: str, primary: str | None = None
) -> ConnectionSetup | None:
    """The :class:`ConnectionSetup` of ``database`` in what a container's ``connection_init`` gave.

    ``given`` is ``None``, a setup or an init function (for this database),
    or a mapping of database names to either; a replica database without an
    entry of its own gets its ``primary``'s. Raises ``ConfigurationError``
    for anything else.
    """
    if isinstance(given, Mapping):
        by_name = {}
        for key, value in given.items():
            if not isinstance(key, str):
                raise ConfigurationError(
                    f"connection_init maps database names to setups, got the key {key!r}"
                )
            name = str(database_name(key))  # ConfigurationError for a name no database can have
            if name != database and not is_declared(name):
                _warn_undeclared(name)
            by_name[name] = value
        entry = by_name.get(database)
        if entry is None and primary is not None:
            entry = by_name.get(primary)
        given = entry
    if given is None or isinstance(given, ConnectionSetup):
        return given
    if callable(given):
        return ConnectionSetup(init=given)
    raise ConfigurationError(
        f"the connection set-up of the {database} database must be a ConnectionSetup or an "
        f"async function taking the connection, got {type(given).__name__}"
    )


@functools.cache
def _warn_undeclared(name: str) -> None:
    """Once per name: a set-up for a database nobody declared (a typo of a real one?)."""
    logger.warning(
        "connection_init has a set-up for %r, which is no declared database: it applies only "
        "if a database of that name is opened (check the spelling)",
        name,
    )


@dataclass(frozen=True, slots=True)
class ConnectionPreparation:
    """The set-up a pool gives each new connection: built from settings and code.

    ``server_settings`` go into the connect call; calling the object (with
    the open connection) installs the JSON codec and runs the init hook;
    ``runs_anything`` is false when that would do nothing.
    """

    database: str
    json_codec: JsonCodec = "text"
    init: ConnectionInit | None = None
    server_settings: Mapping[str, str] = field(default_factory=dict)

    @property
    def runs_anything(self) -> bool:
        """Whether calling it does any work (else the pool skips the call)."""
        return self.json_codec != "text" or self.init is not None

    async def __call__(self, connection: asyncpg.Connection[Any]) -> None:
        """Install the JSON codec, then run the init hook; errors are annotated and raised."""
        try:
            if self.json_codec == "python":
                # Built-in types: asyncpg resolves them without a round trip.
                for type_name in ("json", "jsonb"):
                    await connection.set_type_codec(
                        type_name,
                        schema="pg_catalog",
                        encoder=_encode_json,
                        decoder=json.loads,
                        format="text",
                    )
            if self.init is not None:
                await self.init(connection)
        except BaseException as exc:
            exc.add_note(f"while setting up a new connection of the {self.database} database")
            raise
