"""The domain model: each entity described once (fields, keys, defaults, the legacy document it lives in,
its lock, the rules both stores enforce), the legacy on-disk layout (which file holds which document),
input validation, and time (timestamps, ids, durations).

Knows no storage: the stores and the public API build on it.
"""
