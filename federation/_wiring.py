"""The composition root: a :class:`Federation` built once from one ``Settings``, and what the shim needs
from it (the phase, the SQL store, the file locks, the comparison).

A call's path, read from here: the public API (``messaging``, ``context``, ``governance``) validates and
calls ``core.<operation>`` (the file store, through the module); the shim installed on ``core`` by
:func:`hooks` routes it by the phase (:func:`phase`) and the one routing table ``core.SHIM_SPEC`` to
``core``'s own body (the files of :attr:`Federation.tree`), to the same method of the SQL store
(:meth:`Federation.candidate`), or to both.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Any, Callable, Iterator

from . import config, core
from .domain.compare import record_diff
from .stores.files import Tree
from .stores.protocol import Store

__all__ = ["Federation", "current", "default_federation", "env_mode", "phase", "candidate", "hooks"]


class Federation:
    """One federation, built once from one :class:`~federation.config.Settings`: its legacy tree (the file
    store's side), its SQL store, the routing of a call (``core.SHIM_SPEC``, by the phase) and its phase
    source (environment pin > the live flag under its root > the default), handed down from here.

    The public functions serve the configured default federation (:func:`default_federation`); within
    ``with fed.serve():`` they, ``core`` and the shim serve *fed* instead, in this thread or task only::

        a, b = Federation(config.settings_with({...})), Federation(config.settings_with({...}))
        with a.serve():
            messaging.send_message("alice", "bob", "hi")   # a's files or database, never b's
    """

    #: the one routing table: per operation, what it reads or writes, the lock held across both sides
    routing = core.SHIM_SPEC

    def __init__(self, settings: config.Settings):
        self.settings = settings
        self.tree = Tree(settings.root)

    def __repr__(self) -> str:
        return f"Federation(root={str(self.settings.root)!r}, db={self.settings.db_display!r})"

    @property
    def store(self) -> Any:
        """The SQL store of this federation's database and root (one per process and database; looked up, not
        kept, so that ``forget_stores`` closes it for good)."""
        from .stores.sqlstore import get_store

        return get_store(self.settings)

    def candidate(self, phase: int) -> Store:
        """The SQL store the shim sends a call's database side to (the file side is ``core`` itself)."""
        store = self.store
        # Create the schema before the first write of any side, so that a new
        # federation's database is known to need no backfill (its files come later).
        store.db.ensure_schema()
        store.ensure_root()  # a process that writes creates the root, also in phase 4 (which writes no file)
        if phase >= 3:
            store.ensure_backfilled()
        return store

    def phase(self) -> int:
        """The phase a call to this federation starting now is routed by."""
        with self.serve():
            return phase()

    @contextlib.contextmanager
    def serve(self) -> Iterator["Federation"]:
        """Serve this federation in the current thread or task for the block (re-entrant; other threads keep theirs)."""
        token = _current.set(self)
        try:
            with config.serving(self.settings):
                yield self
        finally:
            _current.reset(token)


_current: contextvars.ContextVar[Federation | None] = contextvars.ContextVar("federation_current", default=None)
_default: Federation | None = None


def default_federation() -> Federation:
    """The federation of the configured settings (``config.settings()``), built once per settings."""
    global _default
    s = config.settings()
    fed = _default
    if fed is None or fed.settings is not s:
        fed = _default = Federation(s)
    return fed


def current() -> Federation:
    """The federation a call starting now serves: the one being served in this thread or task, else the default."""
    return _current.get() or default_federation()


def env_mode() -> tuple[int, float]:
    """(phase, sample) from the environment alone: the behaviour before the live flag (benchmarks)."""
    s = config.settings()
    return (s.phase if s.use_db else 1), s.shadow_sample


#: The federation's answer to "which phase now?", the one the shim was last given (see hooks()).
_mode: Callable[[], tuple[int, float]] = env_mode


def phase() -> int:
    """The phase a call starting now is routed by: environment pin > live flag > phase 3 (as the shim sees it)."""
    return int(_mode()[0])


def candidate(phase: int) -> Store:
    """The SQL store the shim sends a call's database side to: the current federation's."""
    return current().candidate(phase)


def hooks(control: bool = True) -> dict:
    """The shim's hooks; *control*: the phase from the control plane (environment pin > live flag >
    phase 3) and every dual-phase call counted, else the phase from the environment only, nothing
    counted (the behaviour before the control plane; benchmarks compare the two)."""
    hooks = {"candidate": candidate, "mode": env_mode, "lock": core.file_lock, "spec": core.SHIM_SPEC,
             "observers": (), "differ": record_diff}  # the consistency report's comparison: both agree
    if control:
        from .rollout import call_mode, observe

        def control_mode() -> tuple[int, float]:  # the control plane's answer, for the federation served
            return call_mode(config.settings())

        hooks.update(mode=control_mode, observers=(observe,))
    global _mode
    _mode = hooks["mode"]
    return hooks
