"""The shared-state layer of a federation of cooperating AI agents.

``federation.core`` holds the legacy ``load_*``/``save_*`` persistence
functions; the transition shim is installed on them here, by one line, so
every caller (``messaging``, ``context``, ``governance``) reaches the files,
the database or both as ``FEDERATION_USE_DB`` / ``FEDERATION_PHASE`` say.
"""

import shim as _shim

from . import _wiring, core

_shim.install(core, **_wiring.hooks())

__version__ = "0.2.0"
__all__ = ["core", "messaging", "context", "governance", "tasks", "errors", "config"]
