"""Files named by settings (a DSN, a password, certificates): checked and read, never shown.

Errors name the variable and the path, and say what the system refused;
they never hold a file's content.
"""

from __future__ import annotations

from pathlib import Path

from wellwon_db.errors import ConfigurationError

__all__ = ["check_readable", "read_secret"]


def check_readable(path: Path, variable: str, database: object) -> None:
    """Raise ``ConfigurationError`` naming ``variable`` and ``path`` unless it can be read."""
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise ConfigurationError(
            f"{variable}={path}: the {database} database's file cannot be read "
            f"({exc.strerror or type(exc).__name__}); fix the path or the file's permissions",
            env_var=variable,
        ) from None


def read_secret(path: Path, variable: str, database: object) -> str:
    """The content of the secret file ``path``, without its trailing line break.

    Raises ``ConfigurationError`` naming ``variable`` and ``path`` when the
    file cannot be read, is not UTF-8 text or is empty (the content never
    appears in the message).
    """
    check_readable(path, variable, database)
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:  # it went away since the check
        raise ConfigurationError(
            f"{variable}={path}: the {database} database's file cannot be read "
            f"({exc.strerror or type(exc).__name__})",
            env_var=variable,
        ) from None
    except UnicodeDecodeError:
        raise ConfigurationError(
            f"{variable}={path}: the {database} database's file is not UTF-8 text",
            env_var=variable,
        ) from None
    # Secrets mounted by Docker or Kubernetes, or written by `echo`, end with a
    # line break that is no part of the secret.
    value = text.rstrip("\r\n")
    if not value:
        raise ConfigurationError(
            f"{variable}={path}: the {database} database's file is empty",
            env_var=variable,
        )
    return value
