"""Health checks per database.

Internal: import the public names from ``wellwon_db``.
"""
