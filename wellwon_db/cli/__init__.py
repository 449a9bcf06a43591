"""The ``wellwon-db`` command.

Internal: import the public names from ``wellwon_db``.
"""
