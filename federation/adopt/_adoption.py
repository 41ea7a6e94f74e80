"""One adopted module: its declarations checked and planned, its functions wrapped (and their aliases patched)."""

from __future__ import annotations

import contextlib
import sys
import threading
from typing import Any, Callable, Mapping

import wrapt
from shim import Experiment, Phase

from ..domain.compare import record_diff
from .. import core, rollout
from .._wiring import candidate, current
from ..stores import files as _files
from ._call import _Call
from ._declare import AdoptedPhaseError, Atomic, DeclarationError, log
from ._plan import _Plan
from ._values import _ABSENT, _freeze, _thaw


# ---------------------------------------------------------------------------
# installing


class _Adoption:
    """The declared functions of one module, wrapped."""

    #: the bases kept per process (a thread that never loaded a document merges against these): bounded
    MAX_BASES = 4096

    def __init__(self, module: Any, declarations: Mapping[str, Any]):
        self.module = module
        self.name = module.__name__
        self.originals: dict[str, Callable] = {}
        self.aliases: list[tuple[Any, str, Callable]] = []  # (module, name, original) patched elsewhere
        self.plans: dict[str, _Plan] = {}
        # the shim's own publishing (events, then observers): mismatches compared, logged and counted as for our core
        self.experiment = Experiment(module, candidate, _mode, None, (rollout.observe,), record_diff)
        self._bases = threading.local()
        self._last_base: dict[Any, Any] = {}
        self._docs: dict[tuple[Any, Any], Any] = {}  # (tree, document) -> the gate's handle of its file
        #: (tree, agent) -> the look at that agent's list-file inbox at which this process last found every
        #: unread message of the file in the database (phases 2 and 3: not checked again while it is the same)
        self.backfilled: dict[tuple[Any, str], Any] = {}
        for fname, decl in declarations.items():
            self.plans[fname] = _Plan.check(module, fname, decl)

    def wrap(self) -> None:
        for fname, plan in self.plans.items():
            self.originals[fname] = getattr(self.module, fname)
            wrapper = self._atomic(plan) if isinstance(plan.decl, Atomic) else self._wrapper(plan)
            wrapt.wrap_function_wrapper(self.module, fname, wrapper)
        try:
            self._patch_aliases()
        except DeclarationError:
            self.unwrap()
            raise

    def unwrap(self) -> None:
        for mod, attr, original in self.aliases:
            with contextlib.suppress(Exception):
                setattr(mod, attr, original)
        self.aliases = []
        for fname, original in self.originals.items():
            setattr(self.module, fname, original)

    def _patch_aliases(self) -> None:
        """Module-level names bound to an adopted function elsewhere in the package (``from .state import
        save_polls`` run before the install) now name the wrapped function too; one that cannot be
        patched is refused, named."""
        package = self.name.split(".")[0]
        originals = {id(fn): fname for fname, fn in self.originals.items()}
        refused = []
        for mod_name, mod in list(sys.modules.items()):
            if mod is None or mod is self.module or not (mod_name == package or mod_name.startswith(package + ".")):
                continue
            try:
                names = list(vars(mod).items())
            except TypeError:
                continue
            for attr, value in names:
                fname = originals.get(id(value))
                if fname is None or value is not self.originals[fname]:
                    continue
                try:
                    setattr(mod, attr, getattr(self.module, fname))
                except Exception as exc:  # noqa: BLE001 - a module that refuses: named, nothing left half-done
                    refused.append(f"{mod_name}.{attr} ({type(exc).__name__}: {exc})")
                    continue
                self.aliases.append((mod, attr, value))
                log.info("adopt_alias_patched", alias=f"{mod_name}.{attr}", function=f"{self.name}.{fname}")
        if refused:
            raise DeclarationError(f"{self.name}: these names bind an adopted function and cannot be patched: "
                                   f"{', '.join(refused)}; install the adoption before they are imported "
                                   "(adopt.install_when_imported)")

    # -- the thread's base of each whole document --------------------------------
    # Kept frozen (marshal bytes: a third of a copy's cost) and thawed only when a save needs it.
    def base(self, document: Any, default: Any = None) -> Any:
        bases = getattr(self._bases, "docs", None) or {}
        frozen = bases[document] if document in bases else self._last_base.get(document, _ABSENT)
        # a thread that never loaded it: what this process loaded last (a load at import time, say)
        return default if frozen is _ABSENT else _thaw(frozen)

    def frozen(self, document: Any) -> Any:
        bases = getattr(self._bases, "docs", None) or {}
        return bases[document] if document in bases else self._last_base.get(document, _ABSENT)

    def look(self, document: Any) -> Any:
        """What this thread saw of *document*'s file and stamp when it last loaded or saved it (phase 1: a
        save that sees the same writes the caller's document as it is, without re-reading it)."""
        return (getattr(self._bases, "looks", None) or {}).get(document)

    def remember(self, document: Any, value: Any, *, look: Any = None, frozen: Any = None) -> None:
        bases = getattr(self._bases, "docs", None)
        if bases is None:
            bases = self._bases.docs = {}
            self._bases.looks = {}
        if look is None:
            self._bases.looks.pop(document, None)
        else:
            self._bases.looks[document] = look
        bases[document] = frozen = _freeze(value) if frozen is None else frozen
        if document not in self._last_base and len(self._last_base) >= self.MAX_BASES:
            with contextlib.suppress(StopIteration, KeyError, RuntimeError):
                del self._last_base[next(iter(self._last_base))]  # the oldest: a bounded memory
        self._last_base[document] = frozen

    def remember_load(self, document: Any, value: Any, look: Any) -> None:
        """After a load from the files: what was read is the base, unless the look says the file is what this
        thread last loaded or saved (no write since: the same stamp and identity), when its base stands (it
        is that file) and is not frozen again."""
        if look is not None and look.known:
            looks = getattr(self._bases, "looks", None)
            if looks and looks.get(document) == look and document in self._bases.docs:
                return
        self.remember(document, value, look=look)

    def note_backfilled(self, key: tuple[Any, str], look: Any) -> None:
        if look is None or not look.known:
            self.backfilled.pop(key, None)
            return
        if key not in self.backfilled and len(self.backfilled) >= self.MAX_BASES:
            self.backfilled.clear()
        self.backfilled[key] = look

    def doc(self, tree: Any, document: Any, lock: str, path: Any) -> Any:
        """The gate's handle of the legacy document *path* (its stamps), made once per tree and document."""
        key = (tree, document)
        found = self._docs.get(key)
        if found is None:
            if len(self._docs) >= self.MAX_BASES:
                self._docs.clear()
            found = self._docs[key] = _files.StampDoc(tree, lock, path)
        return found

    def _wrapper(self, plan: "_Plan") -> Callable:
        what = f"{self.name}.{plan.name}"
        lock_of = plan.lock_of

        def wrapper(wrapped: Callable, instance: Any, args: tuple, kwargs: dict) -> Any:
            try:
                owner = plan.owner(args, kwargs)
            except TypeError:
                return wrapped(*args, **kwargs)  # a bad call: the adopter's function says what is wrong
            phase = _phase_of_call(what)
            tree = core.tree()
            lock = lock_of(owner)
            call = _Call(self, plan, wrapped, args, kwargs, owner, phase, lock, tree)
            with _files.locked(tree, lock):
                return call.run()

        return wrapper

    def _atomic(self, plan: "_Plan") -> Callable:
        what = f"{self.name}.{plan.name}"
        lock_of = plan.lock_of

        def wrapper(wrapped: Callable, instance: Any, args: tuple, kwargs: dict) -> Any:
            try:
                owner = plan.owner(args, kwargs)
            except TypeError:
                return wrapped(*args, **kwargs)
            _phase_of_call(what)  # refuses phase 4 before anything runs
            with _files.locked(core.tree(), lock_of(owner)):
                return wrapped(*args, **kwargs)

        return wrapper


def _phase_4_refusal(what: str) -> AdoptedPhaseError:
    return AdoptedPhaseError(
        f"{what}: this process is in phase 4 (database only), and adopted code writes the legacy files: "
        "it is not run in phase 4 (nothing was written); finish by calling federation.* (docs/adopting.md, "
        "'Phase 4'), or go back to phase 3 (rollout set 3, or the process's FEDERATION_PHASE)")


def _mode() -> tuple[int, float]:
    """(phase, sample) from the control plane, for the federation a call starting now serves."""
    return rollout.mode(current().settings)


def _phase_of_call(what: str) -> tuple[Phase, float]:
    """The phase of this call (decided once, at its start), as for the project's own code.

    Adopted functions never run phase 4 (their file code would write the files the
    fleet no longer keeps): a call in phase 4, by the flag or a pin, is refused.
    """
    phase, sample = rollout.mode(current().settings)
    if phase == 4:
        raise _phase_4_refusal(what)
    return _PHASES.get(phase) or Phase(phase), sample


_PHASES = {int(p): p for p in Phase}
