"""OpenTelemetry spans and metrics, and the slow-query log (the API only).

Internal: import the public names from ``wellwon_db``.
"""
