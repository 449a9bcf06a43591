"""Sharding: logical shards placed on named databases, routing by key, fan-out, IDs, migrations.

Internal: import the public names from ``wellwon_db`` (see docs/sharding.md).
"""
