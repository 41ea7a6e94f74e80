"""The stores: the ``Store`` protocol (``protocol``), the legacy file tree (``files``; ``federation.core``
holds the file store's operations, where the shim is installed), the SQL store (``sqlstore``) on the
database façade (``database``: connections, transactions with retries, schema upgrades), its engines
(``dialect``, ``sqlite``, ``postgres``, ``netfs``), the versioned ``schema`` and the SQL text built from
the entity descriptions (``sqltext``).
"""
