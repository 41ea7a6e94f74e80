"""The ``federation`` command line.

Every command takes ``--root`` and ``--db``, which win over the
environment.  Library errors become one clean line on stderr and exit 1
(usage errors exit 2), never a traceback.

Each invocation builds its :class:`~federation.config.Settings` once (the
environment with ``--root``/``--db`` on top) and hands them to the command it
runs (``settings=``).  The same values also stand as overrides while the command
runs -- the library's per-call lookups (the file side of ``core``, the phase of a
shimmed call) still read the configured federation -- and are dropped when it
returns, so nothing is left set in the process.
"""

from __future__ import annotations

from . import _operations, _overview, _rollout, _serve, _transfer
from ._base import main
from ._overview import status_data

#: each module registers its commands on ``main`` when imported
COMMANDS = (_overview, _transfer, _operations, _serve, _rollout)
_moment = _rollout._moment  # a moment parsed as the commands parse ``--since``

__all__ = ["main", "status_data"]
