"""The start-up check that every worker's pool fits in the server's free connections."""

from __future__ import annotations

import logging
from typing import Final

from wellwon_db.config._policies import PoolConfig
from wellwon_db.errors import ConfigurationError
from wellwon_db.pool._connector import Connection

__all__ = ["check_capacity"]

logger = logging.getLogger("wellwon_db.pool")

_CAPACITY_SQL: Final = """
SELECT current_setting('max_connections')::int AS max_connections,
       current_setting('superuser_reserved_connections')::int AS superuser_reserved,
       coalesce(current_setting('reserved_connections', true), '0')::int AS reserved,
       (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend') AS in_use,
       (SELECT count(*) FROM pg_stat_activity
         WHERE backend_type = 'client backend' AND application_name = $1) AS ours
"""


async def check_capacity(connection: Connection, config: PoolConfig, name: str) -> None:
    """Compare what all workers may open (``workers x max_size``) with the server's free slots.

    Asks on ``connection`` (one of the pool's own, or one outside its slots).
    Too few: ``ConfigurationError`` with ``capacity_check="refuse"``, else a
    warning. Both name the settings to change.
    """
    row = await connection.fetchrow(
        _CAPACITY_SQL, config.application_name, timeout=config.command_timeout or None
    )
    if row is None:
        return
    reserved = row["superuser_reserved"] + row["reserved"]
    others = row["in_use"] - row["ours"]
    available = row["max_connections"] - reserved - others
    needed = config.workers * config.max_size
    if needed <= available:
        return
    names = config.setting_names
    max_size_var = names.get("pool_max_size", "pool_max_size")
    budget_var = names.get("pool_budget", "pool_budget")
    message = (
        f"the {name} database cannot hold this service's pools: "
        f"{config.workers} workers x max_size {config.max_size} = {needed} connections, "
        f"but the server has {available} free (max_connections {row['max_connections']}, "
        f"{reserved} reserved, {others} used by others); lower {max_size_var}, set "
        f"{budget_var}, or raise the server's max_connections"
    )
    if config.capacity_check == "refuse":
        raise ConfigurationError(message, env_var=budget_var)
    logger.warning(message, extra={"database": name, "needed": needed})
