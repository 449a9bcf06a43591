"""Write positions for read-your-writes: where in the WAL a context's last committed write ends.

After a write through a primary that has replicas commits, the client
records the primary's WAL position in the current context (a ``ContextVar``:
the asyncio task and the tasks it starts from then on). A replica read in
that context goes only to a replica that has replayed past it, else to the
primary. Reads in other contexts are unaffected.

Across requests the position travels as a token: :func:`write_token` gives
the current context's positions as a short string (``"main:0/16B3A28"``),
safe to put in a cookie or header; ``with read_after(token):`` makes reads in
the block honour it.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from wellwon_db.config._registry import database_name
from wellwon_db.errors import ConfigurationError

__all__ = [
    "format_lsn",
    "parse_lsn",
    "position_of",
    "read_after",
    "record_write",
    "write_token",
]

#: Per primary database name, the WAL position (an int) of the context's last write.
_positions: contextvars.ContextVar[Mapping[str, int] | None] = contextvars.ContextVar(
    "wellwon_db_write_positions", default=None
)


def parse_lsn(text: str) -> int:
    """``"16/B374D848"`` (PostgreSQL's ``pg_lsn`` text) as an int; ``ValueError`` if malformed."""
    high, sep, low = text.strip().partition("/")
    if not sep:
        raise ValueError(f"not a WAL position: {text!r}")
    return (int(high, 16) << 32) | int(low, 16)


def format_lsn(lsn: int) -> str:
    """An int WAL position as PostgreSQL writes it (``"16/B374D848"``)."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def position_of(primary: str) -> int | None:
    """The current context's write position on ``primary``, if it wrote there."""
    positions = _positions.get()
    if positions is None:
        return None
    return positions.get(primary)


def record_write(primary: str, lsn: int) -> None:
    """Note that this context's write on ``primary`` committed at ``lsn`` (never moves back)."""
    positions = _positions.get()
    if positions is not None and positions.get(primary, -1) >= lsn:
        return
    # A new mapping each time: contexts copied into child tasks keep theirs.
    _positions.set({**(positions or {}), primary: lsn})


def write_token() -> str | None:
    """The current context's write positions as a token, ``None`` when it wrote nothing.

    The token is ``"<database>:<lsn>"`` per primary, comma-separated: no
    secret, stable across processes and workers of the same cluster.
    """
    positions = _positions.get()
    if not positions:
        return None
    return ",".join(f"{name}:{format_lsn(lsn)}" for name, lsn in sorted(positions.items()))


def _parse_token(token: str) -> dict[str, int]:
    positions: dict[str, int] = {}
    for part in token.split(","):
        name, _, lsn = part.strip().partition(":")
        try:
            positions[str(database_name(name))] = parse_lsn(lsn)
        except (ValueError, ConfigurationError):
            raise ConfigurationError(
                f"not a wellwon_db write token: {token!r} (expected 'main:0/16B3A28', as "
                "write_token() gives)"
            ) from None
    return positions


@contextmanager
def read_after(token: str | None) -> Iterator[None]:
    """Reads in the block see the writes ``token`` stands for (and this context's own).

    ``None`` or ``""`` changes nothing, so a missing header can be passed as
    it is. After the block the token no longer applies, but writes made in
    the block stay recorded. Raises ``ConfigurationError`` for a malformed token.
    """
    if not token:
        yield
        return
    before = _positions.get() or {}
    entered = dict(before)
    for name, lsn in _parse_token(token).items():
        entered[name] = max(lsn, entered.get(name, -1))
    _positions.set(entered)
    try:
        yield
    finally:
        after = dict(before)
        for name, lsn in (_positions.get() or {}).items():
            if lsn > entered.get(name, -1):  # written in the block: this context's own
                after[name] = lsn
        _positions.set(after or None)
