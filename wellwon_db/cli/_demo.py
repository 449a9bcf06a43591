"""``wellwon-db demo``: two embedded servers, the container wired through the environment."""

from __future__ import annotations

from collections.abc import Callable

from wellwon_db.client._client import MainDB, ReferenceDB
from wellwon_db.config._config import PostgresConfig
from wellwon_db.di._container import DatabaseContainer, database_lifespan
from wellwon_db.testing._server import PostgresServer

__all__ = ["run_demo"]

#: The demo's settings, given in code (they win over the environment).
_DEMO_SETTINGS = {
    "main": {"pool_min_size": 4, "pool_max_size": 8},
    "reference": {"pool_min_size": 2, "pool_max_size": 3, "pool_command_timeout_sec": 5},
}


class InsufficientFunds(Exception):
    """The demo's business rule: no negative balances."""


async def run_demo(out: Callable[[str], None] = print) -> None:
    """Start two throwaway servers, run the tour, stop everything."""
    out("starting two embedded PostgreSQL servers ...")
    with PostgresServer("main") as main_server, PostgresServer("reference") as ref_server:
        main_dsn = main_server.create_database("wellwon_main")
        ref_dsn = ref_server.create_database("wellwon_reference")
        out(f"  main      on {main_server.host}:{main_server.port}")
        out(f"  reference on {ref_server.host}:{ref_server.port}")
        container = DatabaseContainer()
        container.settings.from_dict(
            {
                "main": {**_DEMO_SETTINGS["main"], "dsn": main_dsn},
                "reference": {**_DEMO_SETTINGS["reference"], "dsn": ref_dsn},
            }
        )
        await _tour(container, out)
        out("stopping the servers ...")
    out("done: every pool closed, both servers stopped and deleted.")


async def _tour(container: DatabaseContainer, out: Callable[[str], None]) -> None:
    config: PostgresConfig = container.config()
    out("\nsettings from code over the environment (each database its own):")
    for database in config.databases:
        pool = config.get_pool_config(database)
        out(
            f"  {database:<9} min_size={pool.min_size} max_size={pool.max_size} "
            f"timeout={pool.timeout:g}s command_timeout={pool.command_timeout:g}s "
            f"application_name={pool.application_name}"
        )

    async with database_lifespan(container):
        main: MainDB = container.main_db()
        reference: ReferenceDB = container.reference_db()

        out("\nrouting (each client reaches its own server and database):")
        for client in (main, reference):
            name, port = await client.fetchrow(
                "SELECT current_database(), inet_server_port()"
            ) or ("?", "?")
            out(f"  {type(client).__name__:<11} -> database {name} on port {port}")

        out("\npools as the servers see them (pg_stat_activity by application_name):")
        for client in (main, reference):
            name = client.pool.config.application_name
            count = await client.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", name
            )
            out(f"  {name:<22} {count} connections open (min_size {client.pool.config.min_size})")

        await _create_sample_data(main, reference)

        out("\na transaction on main (commit), then one that fails (rollback):")
        async with main.transaction() as tx:
            await tx.execute(
                "UPDATE user_accounts SET balance = balance - 25 WHERE username = 'ada'"
            )
            await tx.execute(
                "UPDATE user_accounts SET balance = balance + 25 WHERE username = 'linus'"
            )
        try:
            async with main.transaction() as tx:
                await tx.execute(
                    "UPDATE user_accounts SET balance = balance - 1000 WHERE username = 'ada'"
                )
                if (
                    await tx.fetchval("SELECT balance FROM user_accounts WHERE username = 'ada'")
                    < 0
                ):
                    raise InsufficientFunds("ada cannot pay 1000")  # noqa: TRY301 (the demo)
        except InsufficientFunds as exc:
            out(f"  rolled back: {exc}")
        for row in await main.fetch("SELECT username, balance FROM user_accounts ORDER BY id"):
            out(f"  {row['username']:<6} balance {row['balance']}")

        out("\na query on each database:")
        users = await main.fetch("SELECT username, country FROM user_accounts ORDER BY id")
        codes = {
            row["country"]: row["customs_code"]
            for row in await reference.fetch("SELECT country, customs_code FROM dc_customs")
        }
        for user in users:
            code = codes.get(user["country"], "?")
            out(f"  {user['username']:<6} ships from {user['country']} (customs {code})")
        out("\nshutting the pools down ...")


async def _create_sample_data(main: MainDB, reference: ReferenceDB) -> None:
    await main.execute(
        """
        CREATE TABLE user_accounts (
            id serial PRIMARY KEY,
            username text UNIQUE NOT NULL,
            country text NOT NULL,
            balance numeric(12, 2) NOT NULL DEFAULT 0
        )
        """
    )
    await main.executemany(
        "INSERT INTO user_accounts (username, country, balance) VALUES ($1, $2, $3)",
        [("ada", "GB", 100), ("linus", "FI", 50), ("grace", "US", 75)],
    )
    await reference.execute(
        "CREATE TABLE dc_customs (country text PRIMARY KEY, customs_code text NOT NULL)"
    )
    await reference.executemany(
        "INSERT INTO dc_customs VALUES ($1, $2)",
        [("GB", "GB-HMRC"), ("FI", "FI-TULLI"), ("US", "US-CBP")],
    )
