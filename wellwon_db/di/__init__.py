"""The dependency-injector container, its lifecycle helpers and the seed API.

Internal: import the public names from ``wellwon_db``.
"""
