"""Settings per database: the registry of databases, env naming, validation, derived configs.

Internal: import the public names from ``wellwon_db``.
"""
