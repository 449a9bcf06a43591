"""Citus mode: what the ``citus`` scheme predicts, and the pool size a Citus cluster can take.

With ``PG_SHARDS_SCHEME=citus`` a key's logical shard is the index (in
shard-id order) of the Citus shard that holds it for a hash-distributed
table of ``PG_SHARDS_COUNT`` shards; :func:`citus_shard_range` gives that
shard's ``pg_dist_shard`` bounds, so a placement can be checked against a
cluster (docs/sharding.md has the query). On Citus the whole map usually
lives on one database, the coordinator (``PG_SHARDS_PLACEMENT=coordinator``):
Citus routes each statement itself, and the client still hashes to know a
key's shard (co-location, tenant moves, reports).

:func:`citus_pool_max_size` is the pool-sizing rule: a Citus statement
may open up to ``citus.max_adaptive_executor_pool_size`` connections per
worker, so every client connection of every process, times that, must fit
in what a worker accepts (``max_connections`` less its reserved and
maintenance connections, and at most ``citus.max_shared_pool_size``).
Nothing here talks to a Citus cluster: it is not installable on the test
machines, which check the hashing against PostgreSQL's own functions only.
"""

from __future__ import annotations

from wellwon_db.shards._hashing import citus_hash_range

__all__ = ["citus_pool_max_size", "citus_shard_range"]


def citus_shard_range(shard: int, count: int) -> tuple[int, int]:
    """``(shardminvalue, shardmaxvalue)`` of the ``shard``-th shard of ``count`` in Citus.

    Raises ``ValueError`` for a shard outside ``0 .. count - 1`` or a count below 1.
    """
    if count < 1:
        raise ValueError(f"a Citus table has at least one shard, not {count}")
    return citus_hash_range(shard, count)


def citus_pool_max_size(
    *,
    worker_max_connections: int,
    processes: int,
    executor_pool_size: int = 16,
    reserved: int = 10,
    shared_pool_size: int | None = None,
) -> int:
    """The largest ``PG_POOL_MAX_SIZE`` per process that cannot exhaust a Citus worker.

    ``worker_max_connections`` is a worker's ``max_connections``;
    ``reserved`` the connections kept for others on it (superusers,
    maintenance, replication, the coordinator's own); ``processes`` every
    process of every service holding a pool on the coordinator;
    ``executor_pool_size`` Citus' ``citus.max_adaptive_executor_pool_size``
    (default 16: one statement may open that many connections per worker);
    ``shared_pool_size`` ``citus.max_shared_pool_size`` when set lower than
    the worker's capacity. The rule: ``processes x pool x executor_pool_size
    <= min(worker_max_connections - reserved, shared_pool_size)``.

    Raises ``ValueError`` when not even one connection per process fits,
    saying what to change.
    """
    for name, value in (
        ("worker_max_connections", worker_max_connections),
        ("processes", processes),
        ("executor_pool_size", executor_pool_size),
    ):
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    if reserved < 0:
        raise ValueError(f"reserved must be 0 or more, got {reserved}")
    capacity = worker_max_connections - reserved
    if shared_pool_size is not None:
        capacity = min(capacity, shared_pool_size)
    size = capacity // (processes * executor_pool_size)
    if size < 1:
        raise ValueError(
            f"{processes} processes x {executor_pool_size} executor connections per statement "
            f"exceed a worker's {capacity} connections: raise the workers' max_connections, "
            "lower citus.max_adaptive_executor_pool_size, or put PgBouncer in front of the "
            "coordinator"
        )
    return size
