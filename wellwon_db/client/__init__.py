"""The query API: typed clients, guarded calls, transactions.

Internal: import the public names from ``wellwon_db``.
"""
