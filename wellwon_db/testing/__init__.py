"""Testing support: fake clients, container overrides, throwaway PostgreSQL servers."""

from wellwon_db.testing._server import PostgresNotFoundError, PostgresServer, find_postgres_bindir

__all__ = ["PostgresNotFoundError", "PostgresServer", "find_postgres_bindir"]
