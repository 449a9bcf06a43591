"""The connection pool of one server endpoint: asyncpg connections, leases, reset policy.

Internal: import the public names from ``wellwon_db``.
"""
