"""``override_with_fakes``: every database client of a container replaced by a fake.

The fakes themselves are in ``_fake_clients.py``; a fake of an application's
own client class (``AuditDB``) is made on first use.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from dependency_injector import providers

from wellwon_db.client._client import DatabaseClient, MainDB, ReferenceDB
from wellwon_db.client._declared import DeclaredClient
from wellwon_db.client._readonly import MainReplicaDB, ReadOnlyClient, ReferenceReplicaDB
from wellwon_db.config._registry import Database, database_name
from wellwon_db.di._providers import ContainerLike, database_members
from wellwon_db.di._shards import shard_members
from wellwon_db.errors import ConfigurationError
from wellwon_db.testing._fake_clients import (
    FakeDatabaseClient,
    FakeMainDB,
    FakeReferenceDB,
)
from wellwon_db.testing._fake_replicas import (
    FakeMainReplicaDB,
    FakeReadOnlyClient,
    FakeReferenceReplicaDB,
)

__all__ = ["FakeClient", "FakeDatabases", "fake_client_class", "override_with_fakes"]

#: Any fake client.
FakeClient = FakeDatabaseClient | FakeReadOnlyClient


def fake_client_class(client_class: type[DeclaredClient]) -> type[FakeClient]:
    """The fake of a typed client class: a subclass of both, so it passes where the real one is
    expected. ``FakeMainDB`` and ``FakeReferenceDB`` for the built-in ones; made (once) for others.
    """
    if issubclass(client_class, FakeDatabaseClient | FakeReadOnlyClient):
        return client_class
    made = _FAKE_CLASSES.get(client_class)
    if made is None:
        base: type[FakeClient] = (
            FakeReadOnlyClient if issubclass(client_class, ReadOnlyClient) else FakeDatabaseClient
        )
        made = type(
            f"Fake{client_class.__name__}",
            (base, client_class),
            {"__slots__": (), "__doc__": f"A fake ``{client_class.__name__}``."},
        )
        _FAKE_CLASSES[client_class] = made
    return made


_FAKE_CLASSES: dict[type[DeclaredClient], type[FakeClient]] = {
    MainDB: FakeMainDB,
    ReferenceDB: FakeReferenceDB,
    MainReplicaDB: FakeMainReplicaDB,
    ReferenceReplicaDB: FakeReferenceReplicaDB,
}


class FakeDatabases:
    """The fakes :func:`override_with_fakes` put in place, one per database.

    ``fakes.main`` and ``fakes.reference`` are typed; any database's fake is
    ``fakes["audit"]`` (or ``fakes.for_database("audit")``, or ``fakes.audit``).
    Fakes passed in (``FakeDatabases(main=my_fake)``) are used as they are;
    the others are made when the container's databases are known.
    """

    def __init__(
        self,
        main: FakeMainDB | None = None,
        reference: FakeReferenceDB | None = None,
        **others: FakeClient,
    ) -> None:
        self._fakes: dict[str, FakeClient] = {}
        for name, fake in {"main": main, "reference": reference, **others}.items():
            if fake is not None:
                self._fakes[str(database_name(name))] = fake

    @property
    def main(self) -> FakeMainDB:
        """The main database's fake."""
        fake = self.for_database(Database.MAIN)
        assert isinstance(fake, FakeMainDB)
        return fake

    @property
    def reference(self) -> FakeReferenceDB:
        """The reference database's fake."""
        fake = self.for_database(Database.REFERENCE)
        assert isinstance(fake, FakeReferenceDB)
        return fake

    def for_database(self, database: Database | str) -> FakeClient:
        """The fake of ``database``; ``KeyError`` when it has none."""
        name = str(database_name(database))
        if name not in self._fakes and name in _BUILT_IN:
            self._fakes[name] = _BUILT_IN[name]()
        try:
            return self._fakes[name]
        except KeyError:
            raise KeyError(
                f"no fake for the {name} database (fakes for: {', '.join(self._fakes)})"
            ) from None

    def __getitem__(self, database: Database | str) -> FakeClient:
        return self.for_database(database)

    def __getattr__(self, name: str) -> FakeClient:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self.for_database(name)
        except (KeyError, ConfigurationError):
            raise AttributeError(name) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._fakes)

    def ensure(self, database: Database | str, client_class: type[DeclaredClient]) -> FakeClient:
        """The fake of ``database``, made from ``client_class`` if there is none yet."""
        name = str(database_name(database))
        if name not in self._fakes:
            self._fakes[name] = fake_client_class(client_class)()
        return self._fakes[name]


_BUILT_IN: dict[str, type[FakeClient]] = {
    "main": FakeMainDB,
    "reference": FakeReferenceDB,
    "main_replica": FakeMainReplicaDB,
    "reference_replica": FakeReferenceReplicaDB,
}


@contextmanager
def override_with_fakes(
    container: ContainerLike, fakes: FakeDatabases | None = None
) -> Iterator[FakeDatabases]:
    """Override every database client of ``container`` with a fake and its pool with ``None``.

    ``container`` is a ``DatabaseContainer``, an embedded one (``app.db``),
    or an application container holding database providers (an application's
    own databases included). Inside the block no pool opens, whatever the
    environment says (a sharded client's shards neither: override the sharded
    client itself to fake it); on leaving it the real providers are back.
    """
    fakes = fakes or FakeDatabases()
    overridden: list[providers.Provider[Any]] = []
    try:
        for member in database_members(container):
            if member.client is not None:
                client_class = _provided_class(member.client)
                fake = fakes.ensure(member.name, client_class)
                member.client.override(providers.Object(fake))
                overridden.append(member.client)
            member.pool.override(providers.Object(None))
            overridden.append(member.pool)
        for shards in shard_members(container):  # sharded clients: their shards stay closed
            shards.pools.override(providers.Object(None))
            overridden.append(shards.pools)
        yield fakes
    finally:
        for provider in reversed(overridden):
            provider.reset_last_overriding()


def _provided_class(provider: providers.Provider[Any]) -> type[DeclaredClient]:
    provides = getattr(provider, "provides", None)
    if isinstance(provides, type) and issubclass(provides, DeclaredClient):
        return provides
    return DatabaseClient
