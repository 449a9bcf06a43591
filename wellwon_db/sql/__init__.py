"""Reading SQL text with PostgreSQL's own parser (pglast): what a statement reads.

Internal: import the public names from ``wellwon_db``.
"""
