"""Adopting the shim on your own code: one declaration per persistence function.

A codebase in the migration plan's own style (module globals, zero-argument
``load_polls()`` / ``save_polls()``, JSON files in the federation's legacy
layout) says, per function, which legacy document it loads, saves or
claims and where the value is; the federation does the rest with its own
entity descriptions, SQL store, locks and control plane::

    from federation import adopt
    adopt.install(core, {
        "load_polls":   adopt.Load("polls", into="active_polls"),
        "save_polls":   adopt.Save("polls", source="active_polls"),
        "load_session": adopt.Load("session", key="sid", into="SESSIONS"),   # a keyed cache
        "save_session": adopt.Save("session", key="sid", source="SESSIONS"),
        "join_session": adopt.Atomic("session", key="sid"),                  # load-then-save, one lock
        "load_inbox":   adopt.Load("inbox", key="agent", shape="list"),       # nodes/{agent}/inbox.json
        "check_inbox":  adopt.Claim("inbox", key="agent"),
    })

(``examples/seed_core`` and ``examples/plan_core`` are whole cores adopted this way; docs/adopting.md.)

What every declared call gets:

- it holds its document's file lock (re-entrant within a thread, so a wrapped
  ``save_context`` may call its wrapped ``load_context``), in every phase; an
  ``Atomic`` caller holds it across its own loads and saves;
- a whole-document save (``source=``, or what a keyed or list-file save wrote)
  is merged as a delta against what the same thread loaded, on both sides, so
  concurrent read-modify-writes lose nothing (phase 1 included: the files);
- phase 2 runs the adopter's function (the files) first and mirrors it into
  the database; phase 3 the database first, a ``Load`` answering from it (into
  the module global for ``into=``, keyed by the key for a keyed cache); the other
  side is compared, and mismatches are logged and counted by the project's own
  machinery (the shim's ``Experiment.publish``, the rollout counters);
- where a record only exists once the adopter's function wrote it (``Save``
  without ``source``), "database first" means the database decides: if its
  write fails, the file is put back as it was and the call fails;
- phase 4 is not run by adopted code, which writes the files: ``install`` refuses
  in phase 4 and a declared call raises :class:`AdoptedPhaseError` (nothing
  written) when the process is in phase 4; ``rollout set 4`` is refused while an
  adopted process is alive.  To finish, call ``federation.*``.
"""

from __future__ import annotations

import threading
from typing import Any, Mapping

import wrapt

from .. import rollout
from .._wiring import current
from ._adoption import _Adoption, _mode, _phase_4_refusal
from ._declare import (ENTITIES, AdoptedPhaseError, AdoptedWriteError, Atomic, Claim, DeclarationError, Load,
                       Save)


__all__ = ["Load", "Save", "Claim", "Atomic", "install", "install_when_imported", "uninstall", "installed",
           "DeclarationError", "AdoptedWriteError", "AdoptedPhaseError", "ENTITIES"]


# ---------------------------------------------------------------------------
# the public calls

_adopted: dict[str, _Adoption] = {}
_install_lock = threading.Lock()


def install(module: Any, declarations: Mapping[str, Any]) -> None:
    """Adopt the shim on the already imported *module*: wrap each declared function (idempotent).

    Every declaration is checked first (against the function's signature and, where its source
    shows it, the shape it writes); one that does not fit raises :class:`DeclarationError` naming the
    function (and the parameter), and then nothing is wrapped.  Module-level names elsewhere in the
    package bound to a declared function before now are patched too.  In phase 4 it raises
    :class:`AdoptedPhaseError`: adopted code is not run there.
    """
    if not isinstance(declarations, Mapping):
        raise DeclarationError(f"{getattr(module, '__name__', module)!r}: declarations must be a mapping "
                               "{function name: adopt.Load/Save/Claim(...)}")
    with _install_lock:
        name = module.__name__
        if name in _adopted:
            return
        adoption = _Adoption(module, declarations)  # checks every declaration before anything is wrapped
        if _mode()[0] == 4:
            raise _phase_4_refusal(f"adopting {name}")
        adoption.wrap()  # and patches the package's aliases of the wrapped functions (or refuses, unwrapped)
        _adopted[name] = adoption
    rollout.announce_adopted(name, settings=current().settings)


def install_when_imported(module_name: str, declarations: Mapping[str, Any]) -> None:
    """Adopt the shim on *module_name* as soon as it is imported (at once if it already is).

    The one safe order: call it before anything imports the module.  A module of
    the same package that bound ``from pkg.core import save_polls`` earlier is
    patched by :func:`install` too (or the install is refused, naming it); a name
    bound outside the package, or inside a class or closure, cannot be found.
    """
    wrapt.register_post_import_hook(lambda module: install(module, declarations), module_name)


def uninstall(module: Any) -> None:
    """Put the module's original functions back."""
    with _install_lock:
        adoption = _adopted.pop(module.__name__, None)
    if adoption is None:
        return
    adoption.unwrap()
    rollout.announce_adopted(module.__name__, adopted=False, settings=current().settings)


def installed(module: Any) -> bool:
    return module.__name__ in _adopted
