"""``PoolStats``: what a pool reports of itself to telemetry, health and the CLI."""

from __future__ import annotations

from typing import Literal, TypedDict

__all__ = ["PoolCount", "PoolStats"]


class PoolStats(TypedDict):
    """A snapshot of one pool, from ``DatabasePool.get_stats()``. Stable keys.

    Current counts: ``size`` (open connections the pool tracks; ones the
    server or the network closed count as gone at once), ``idle``,
    ``in_use`` (``size - idle``), ``waiting`` (callers queued for a
    connection), ``reserved`` (slots not idle: in use, being opened, reset
    or closed). Since open: ``acquired`` (leases), ``timeouts`` (acquire
    timeouts), ``connections_opened``, ``connections_retired`` (closed or
    terminated by the pool, or found dead), ``resets`` (session resets on
    release), ``validations_failed`` (idle connections found dead before
    use). Settings: ``min_size``, ``max_size``; ``database`` (its name) and
    ``state`` (``new``, ``opening``, ``open``, ``closing``, ``closed``).
    """

    database: str
    state: str
    min_size: int
    max_size: int
    size: int
    idle: int
    in_use: int
    waiting: int
    reserved: int
    acquired: int
    timeouts: int
    connections_opened: int
    connections_retired: int
    resets: int
    validations_failed: int


#: The keys of :class:`PoolStats` that hold counts.
PoolCount = Literal[
    "min_size",
    "max_size",
    "size",
    "idle",
    "in_use",
    "waiting",
    "reserved",
    "acquired",
    "timeouts",
    "connections_opened",
    "connections_retired",
    "resets",
    "validations_failed",
]
