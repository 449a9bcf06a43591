"""Per-endpoint resilience: the circuit breaker and the retry policies.

Internal: import the public names from ``wellwon_db``.
"""
