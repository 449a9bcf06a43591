"""The registry of databases: which databases exist, how their variables are named, their role.

A database is declared once, as data: a :class:`DatabaseSpec` (its name, the
infix of its environment variables, its role and whether its DSN must be set).
``main`` and ``reference`` are built in. An application declares more by
naming them on a client class (``class AuditDB(DatabaseClient, database="audit")``)
or with :func:`declare_database`; a database nobody declared can still be
named (``database="billing"``): it gets the default spec derived from its
name, which is what the seed API uses for ``POSTGRES_BILLING_DSN``.

Declarations are code, so they are process-wide, like class definitions;
settings are per container (see ``_config.py``).
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from enum import StrEnum
from typing import Final, Literal

from wellwon_db.errors import ConfigurationError

__all__ = [
    "GROUPS",
    "Database",
    "DatabaseName",
    "DatabaseSpec",
    "database_name",
    "declare_database",
    "declared_databases",
    "register_client",
    "spec_for",
]


class Database(StrEnum):
    """The built-in databases. The value is the name used in variables, logs, metrics, errors.

    Any other database is named by a plain ``str`` (``"audit"``); everything
    that takes a database accepts either.
    """

    MAIN = "main"
    REFERENCE = "reference"
    MAIN_REPLICA = "main_replica"
    REFERENCE_REPLICA = "reference_replica"

    @classmethod
    def parse(cls, value: Database | str) -> Database:
        """Return the member for ``value`` (a member or its name, any case).

        Raises ``ConfigurationError`` naming the built-in databases when
        ``value`` is not one of them; :func:`database_name` accepts any name.
        """
        name = database_name(value)
        if isinstance(name, Database):
            return name
        known = ", ".join(member.value for member in cls)
        raise ConfigurationError(f"{name!r} is not a built-in database (those are: {known})")


#: A database's name: a :class:`Database` member for the built-in ones, else a ``str``.
DatabaseName = Database | str

#: The setting groups of the variable pattern ``PG_[<DB>_]<GROUP>_<KNOB>``
#: (``PASSWORD`` holds ``PG_[<DB>_]PASSWORD_FILE`` and ``_PROVIDER``).
GROUPS: Final = ("POOL", "STARTUP", "BREAKER", "RETRY", "LOG", "HEALTH", "CACHE", "PASSWORD")

_NAME = re.compile(r"^[a-z][a-z0-9]*(?:_[a-z0-9]+)*$")


def database_name(value: Database | str) -> DatabaseName:
    """``value`` as a database name: stripped, lower-cased, a member when built in.

    Raises ``ConfigurationError`` when it is not a valid name: lowercase
    letters, digits and single underscores, starting with a letter, and no
    part that is a setting group (``pool``, ``breaker``, ...), which would
    make variable names ambiguous.
    """
    if isinstance(value, Database):
        return value
    name = str(value).strip().lower()
    try:
        return Database(name)
    except ValueError:
        pass
    if not _NAME.match(name) or any(part.upper() in GROUPS for part in name.split("_")):
        raise ConfigurationError(
            f"{str(value)!r} is not a valid database name: use lowercase letters, digits and "
            "single underscores, starting with a letter (e.g. 'audit', 'main_replica'), with "
            f"no part named like a setting group ({', '.join(g.lower() for g in GROUPS)})"
        )
    return name


@dataclass(frozen=True, slots=True)
class DatabaseSpec:
    """One database, as data.

    ``name`` is its name (``"audit"``); ``env_infix`` the part its variables
    carry (``POSTGRES_AUDIT_DSN``, ``PG_AUDIT_POOL_MAX_SIZE``; empty for
    main, whose variables are ``POSTGRES_DSN`` and ``PG_POOL_...``).
    ``replica_of`` names the primary when the database is a read replica of
    another. ``required`` is the default of ``PG_[<DB>_]STARTUP_DSN_REQUIRED``:
    whether a container fails at start-up when the DSN is unset (otherwise the
    database is simply off, and its client says which variable to set).
    """

    name: DatabaseName
    env_infix: str
    replica_of: DatabaseName | None = None
    required: bool = False

    @property
    def role(self) -> Literal["primary", "replica"]:
        """``"replica"`` when it replicates another database, else ``"primary"``."""
        return "primary" if self.replica_of is None else "replica"

    @property
    def env_prefix(self) -> str:
        """The prefix of its ``PG_`` variables: ``PG_`` for main, ``PG_AUDIT_`` for audit."""
        return f"PG_{self.env_infix}_" if self.env_infix else "PG_"

    @property
    def dsn_variable(self) -> str:
        """The variable of its DSN: ``POSTGRES_DSN`` for main, ``POSTGRES_AUDIT_DSN`` for audit."""
        return f"POSTGRES_{self.env_infix}_DSN" if self.env_infix else "POSTGRES_DSN"

    @classmethod
    def derived(cls, name: Database | str) -> DatabaseSpec:
        """The spec of an undeclared database: infix from the name, a primary, optional."""
        valid = database_name(name)
        return cls(valid, str(valid).upper())


MAIN: Final = DatabaseSpec(Database.MAIN, "", required=True)
REFERENCE: Final = DatabaseSpec(Database.REFERENCE, "REFERENCE")
MAIN_REPLICA: Final = DatabaseSpec(Database.MAIN_REPLICA, "MAIN_REPLICA", Database.MAIN)
REFERENCE_REPLICA: Final = DatabaseSpec(
    Database.REFERENCE_REPLICA, "REFERENCE_REPLICA", Database.REFERENCE
)

_lock = threading.Lock()
_declared: dict[str, DatabaseSpec] = {
    str(spec.name): spec for spec in (MAIN, REFERENCE, MAIN_REPLICA, REFERENCE_REPLICA)
}
_clients: dict[str, type] = {}


def declare_database(
    name: Database | str,
    *,
    replica_of: Database | str | None = None,
    required: bool = False,
) -> DatabaseSpec:
    """Declare a database of the application: its variables follow ``name``.

    Idempotent: declaring the same database again with the same options
    returns the same spec. Raises ``ConfigurationError`` for an invalid name,
    a replica of an undeclared primary, or a declaration that contradicts an
    earlier one (built-in databases cannot be redeclared differently).
    """
    valid = database_name(name)
    primary = None if replica_of is None else database_name(replica_of)
    spec = DatabaseSpec(valid, str(valid).upper(), primary, required)
    with _lock:
        existing = _declared.get(str(valid))
        if existing is not None:
            if existing != spec:
                raise ConfigurationError(
                    f"the {valid} database is already declared as {existing}; "
                    f"it cannot be redeclared as {spec}"
                )
            return existing
        if primary is not None and str(primary) not in _declared:
            raise ConfigurationError(
                f"the {valid} database is declared as a replica of {primary!s}, which is not "
                f"declared; declare {primary!s} first"
            )
        _declared[str(valid)] = spec
    return spec


def spec_for(name: Database | str) -> DatabaseSpec:
    """The declared spec of ``name``, or the spec derived from the name when undeclared."""
    valid = database_name(name)
    spec = _declared.get(str(valid))
    return spec if spec is not None else DatabaseSpec.derived(valid)


def declared_databases() -> tuple[DatabaseSpec, ...]:
    """Every declared database, built-in ones first, then in declaration order."""
    with _lock:
        return tuple(_declared.values())


def is_declared(name: Database | str) -> bool:
    """Whether ``name`` was declared (built in, or by the application)."""
    return str(database_name(name)) in _declared


def replicas_of(name: Database | str) -> tuple[DatabaseSpec, ...]:
    """The declared replica databases of the primary ``name``."""
    primary = database_name(name)
    with _lock:
        return tuple(spec for spec in _declared.values() if spec.replica_of == primary)


def register_client(spec: DatabaseSpec, client_class: type) -> None:
    """Record ``client_class`` as the typed client of ``spec``'s database (the first one wins)."""
    with _lock:
        _clients.setdefault(str(spec.name), client_class)


def client_class_of(name: Database | str) -> type | None:
    """The client class declared for ``name``, if any."""
    return _clients.get(str(database_name(name)))
