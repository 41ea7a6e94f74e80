"""The stores: the ``Store`` protocol (``protocol``), the legacy file tree (``files``, the gate to the disk),
the file store's bodies by entity group (``file_messages``, ``file_delivery``, ``file_history``,
``file_nodes``, ``file_polls``, ``file_sessions``, ``file_tasks``; ``federation.core`` binds them to the
configured tree and holds the operations the shim is installed on), the SQL store (``sqlstore``) on the
database façade (``database``: connections, transactions with retries, schema upgrades), its engines
(``dialect``, ``sqlite``, ``postgres``, ``netfs``), the versioned ``schema`` and the SQL text built from
the entity descriptions (``sqltext``).
"""
