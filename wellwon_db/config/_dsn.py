"""DSN checks and redaction: the one place that parses a DSN for display."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlsplit

from wellwon_db.errors import ConfigurationError

__all__ = ["dsn_has_password", "redact_dsn", "validate_dsn"]

_DSN_SCHEMES = ("postgres", "postgresql")


def redact_dsn(dsn: str) -> str:
    """``dsn`` with any password replaced by ``***``, for logs and errors."""
    try:
        parts = urlsplit(dsn)
    except ValueError:
        return "<unparseable DSN>"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hosts = netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:***@{hosts}" if ":" in userinfo else f"{user}@{hosts}"
    query = re.sub(r"(?i)(password=)[^&]*", r"\1***", parts.query)
    return parts._replace(netloc=netloc, query=query).geturl()


def dsn_has_password(dsn: str) -> bool:
    """Whether ``dsn`` carries a password, in its user info or as ``password=`` in its query."""
    try:
        parts = urlsplit(dsn)
        query = parse_qsl(parts.query, keep_blank_values=True)
    except ValueError:
        return False
    return ":" in parts.netloc.rpartition("@")[0] or any(key == "password" for key, _ in query)


def validate_dsn(dsn: str, env_var: str) -> None:
    """Raise ``ConfigurationError`` naming ``env_var`` unless ``dsn`` is a postgres URL."""
    try:
        parts = urlsplit(dsn)
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in _DSN_SCHEMES:
        scheme = parts.scheme if parts is not None and parts.scheme else "none"
        raise ConfigurationError(
            f"{env_var} must be a postgresql:// or postgres:// URL (got scheme {scheme!r}); "
            f"set {env_var}=postgresql://user:password@host:port/dbname",
            env_var=env_var,
        )
    if parts.netloc.count("@") > 1:
        # asyncpg splits user info from the host at the first '@', redaction
        # and our checks at the last: a raw '@' in a password means both are wrong.
        raise ConfigurationError(
            f"{env_var} has more than one '@' before the host: percent-encode '@' (and other "
            "special characters) in the user name and password, e.g. p%40ss for p@ss "
            "(urllib.parse.quote(password, safe=''))",
            env_var=env_var,
        )
    if "," not in parts.netloc:
        try:
            parts.port  # noqa: B018 (parsing validates the port)
        except ValueError:
            raise ConfigurationError(
                f"{env_var} has an invalid port (0-65535 expected); "
                f"set {env_var}=postgresql://user:password@host:port/dbname",
                env_var=env_var,
            ) from None
