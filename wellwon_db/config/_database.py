"""The logical databases wellwon_db knows."""

from __future__ import annotations

from enum import StrEnum

__all__ = ["Database"]


class Database(StrEnum):
    """A logical database. The value is the name used in logs, metrics and errors.

    Adding a database: a member here, a settings class in ``_settings.py``, a
    client type in ``_client.py`` and providers in ``_container.py``. Nothing
    in the pool or telemetry code changes.
    """

    MAIN = "main"
    REFERENCE = "reference"

    @classmethod
    def parse(cls, value: Database | str) -> Database:
        """Return the member for ``value`` (a member or its name, any case).

        Raises ``ConfigurationError`` naming the known databases when unknown.
        """
        if isinstance(value, Database):
            return value
        try:
            return cls(str(value).strip().lower())
        except ValueError:
            from wellwon_db.errors import ConfigurationError

            known = ", ".join(member.value for member in cls)
            raise ConfigurationError(
                f"unknown database {value!r}; known databases: {known}"
            ) from None
