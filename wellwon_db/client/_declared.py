"""``DeclaredClient``: the base of every typed client, which names (and declares) its database."""

from __future__ import annotations

from typing import Any, ClassVar

from wellwon_db.config._registry import (
    Database,
    DatabaseSpec,
    declare_database,
    is_declared,
    register_client,
    spec_for,
)

__all__ = ["DeclaredClient"]


class DeclaredClient:
    """A client class bound to one database: ``class AuditDB(DatabaseClient, database="audit")``.

    Naming a database in the class statement declares it (if no one did)
    and records the class as its client; subclasses of a typed client keep
    its database.
    """

    #: The database a subclass is bound to; ``None`` accepts any.
    spec: ClassVar[DatabaseSpec | None] = None

    __slots__ = ()

    def __init_subclass__(
        cls, *, database: Database | str | DatabaseSpec | None = None, **kwargs: Any
    ) -> None:
        super().__init_subclass__(**kwargs)
        if database is None:
            return
        if isinstance(database, DatabaseSpec):
            spec = database
        elif is_declared(database):
            spec = spec_for(database)
        else:
            spec = declare_database(database)
        cls.spec = spec
        register_client(spec, cls)
