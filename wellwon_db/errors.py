"""The exceptions wellwon_db raises of its own.

The tree::

    WellwonDBError
     ├── ConfigurationError          (also a RuntimeError) a setting is missing or wrong
     ├── PoolClosedError             (also a RuntimeError) a client or pool used after close
     ├── WrongEventLoopError         (also a RuntimeError) a pool used from another event loop
     ├── PoolTimeoutError            (also a TimeoutError) no connection within the acquire timeout
     ├── DatabaseUnavailableError    the database cannot be reached
     │    └── CircuitOpenError       the breaker is open; raised without touching the network
     ├── ShardRoutingError           a sharded call has no shard, or would leave its shard
     │    ├── InvalidShardKeyError   (also a ValueError) a key of the wrong type or range
     │    └── CrossShardWriteError   a write to a second shard inside a transaction
     └── PartialResultError          a fan-out that did not hear from every shard

PostgreSQL's own errors (unique violation, syntax error, serialization
failure, ...) reach the caller unchanged as ``asyncpg.PostgresError``
subclasses: application code already catches those. Connection-level failures
(refused, reset, timed out, server shutting down) are translated into
:class:`DatabaseUnavailableError` in exactly one place, ``_failures.py``, and
raised ``from`` the original error.

No message ever contains a DSN password: errors name the database, host,
port and the environment variable to fix, nothing more.
"""

from __future__ import annotations

__all__ = [
    "CircuitOpenError",
    "ConfigurationError",
    "CrossShardWriteError",
    "DatabaseUnavailableError",
    "InvalidShardKeyError",
    "PartialResultError",
    "PoolClosedError",
    "PoolTimeoutError",
    "ShardRoutingError",
    "WellwonDBError",
    "WrongEventLoopError",
]


class WellwonDBError(Exception):
    """Root of every exception wellwon_db raises of its own."""


class ConfigurationError(WellwonDBError, RuntimeError):
    """A setting is missing or invalid.

    Also a ``RuntimeError``, since code written against the original
    ``pg_client`` catches that. The message names the environment variable to
    set or fix; ``env_var`` holds it when there is exactly one.
    """

    def __init__(self, message: str, *, env_var: str | None = None) -> None:
        super().__init__(message)
        self.env_var = env_var


class PoolClosedError(WellwonDBError, RuntimeError):
    """A pool, or a client bound to it, was used before it was opened or after it closed."""

    def __init__(self, message: str, *, database: str) -> None:
        super().__init__(message)
        self.database = database


class DatabaseUnavailableError(WellwonDBError):
    """The database cannot be reached: refused, reset, timed out or shutting down.

    ``database`` is the logical database name (``"main"``, ``"reference"``).
    ``may_have_run`` is false when the failure came before any statement was
    sent (no connection could be had), so retrying cannot run it twice.
    ``during_commit`` is true when COMMIT was sent and no answer came (the
    connection failed, or the command timed out): the transaction may or may
    not have committed, so ``may_have_run`` is then always true.
    """

    def __init__(
        self,
        message: str,
        *,
        database: str,
        may_have_run: bool = True,
        during_commit: bool = False,
    ) -> None:
        super().__init__(message)
        self.database = database
        self.may_have_run = may_have_run or during_commit
        self.during_commit = during_commit


class CircuitOpenError(DatabaseUnavailableError):
    """The database's circuit breaker is open; the call did not touch the network.

    ``retry_at`` is the ``time.monotonic()`` instant of the next probe, when known.
    """

    def __init__(self, message: str, *, database: str, retry_at: float | None = None) -> None:
        super().__init__(message, database=database, may_have_run=False)
        self.retry_at = retry_at


class WrongEventLoopError(WellwonDBError, RuntimeError):
    """A pool was used from an event loop other than the one it was opened on.

    asyncio objects belong to one loop: open the pools (``start_databases``)
    in the loop that runs the calls, one per process or thread. ``database``
    names the database.
    """

    def __init__(self, message: str, *, database: str) -> None:
        super().__init__(message)
        self.database = database


class PoolTimeoutError(WellwonDBError, TimeoutError):
    """No connection became free within the acquire timeout.

    Carries ``database``, ``max_size`` (the pool's bound), ``waiters`` (tasks
    waiting at the moment of the timeout, this one included), ``timeout``
    (the caller's acquire timeout, seconds) and ``waited`` (seconds the
    caller actually waited, when known).
    """

    def __init__(
        self,
        message: str,
        *,
        database: str,
        max_size: int,
        waiters: int,
        timeout: float,
        waited: float | None = None,
    ) -> None:
        super().__init__(message)
        self.database = database
        self.max_size = max_size
        self.waiters = waiters
        self.timeout = timeout
        self.waited = waited


class ShardRoutingError(WellwonDBError):
    """A sharded call cannot be routed: it has no key, names an unknown shard, or leaves
    the shard its block is locked to. The message says what to do instead."""


class InvalidShardKeyError(ShardRoutingError, ValueError):
    """A shard key of a type the shard map does not hash, or out of the column type's range."""


class CrossShardWriteError(ShardRoutingError):
    """A write to one logical shard while a transaction on another is open in this task.

    ``open_shard`` is the transaction's logical shard, ``shard`` the one written to
    (``None`` for a fan-out). No statement was sent.
    """

    def __init__(self, message: str, *, open_shard: int, shard: int | None) -> None:
        super().__init__(message)
        self.open_shard = open_shard
        self.shard = shard


class PartialResultError(WellwonDBError):
    """A fan-out did not get an answer from every shard it asked (``allow_partial=False``).

    ``result`` holds what did arrive: the answers per shard, and the error of each
    shard that failed or did not answer within the timeout.
    """

    def __init__(self, message: str, *, result: object) -> None:
        super().__init__(message)
        self.result = result
