"""The experiment run for each wrapped function: control, candidate, compare, publish.

Phase 1 calls the original.  Phase 2 makes the original (the files) the
control and the candidate store's method of the same name the candidate;
phase 3 swaps them; phase 4 calls only the candidate.  The control always
runs first and its result (or exception) is what the caller gets; the
candidate's failure is published as ``shadow_error`` and never raised.

Each dual-phase call is recorded as one :class:`Observation` (one
:class:`Outcome` per side) and handed to :meth:`Experiment.publish`, the one
place events leave the shim: structlog events, then the observers given to
:func:`shim.install` (counters, dashboards).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import enum
import random
import threading
import time
from typing import Any, Callable, ContextManager, Iterable

from ._log import library_logger

from ._compare import Differ, delta, patch, split_records, whole_record_diff

log = library_logger("shim")

#: Names of the two sides in published events.
FILES, DB = "files", "db"


class Phase(enum.IntEnum):
    """A rollout phase: which side is authoritative, which is shadowed."""

    FILES_ONLY = 1     #: the legacy files only (the shim is off)
    FILES_THEN_DB = 2  #: files authoritative, the database written and compared
    DB_THEN_FILES = 3  #: the database authoritative, the files written and compared
    DB_ONLY = 4        #: the database only

    @property
    def dual(self) -> bool:
        """Both sides are written and compared."""
        return self is Phase.FILES_THEN_DB or self is Phase.DB_THEN_FILES

    @property
    def authority(self) -> str:
        """The side reads are served from and written first."""
        return FILES if self <= Phase.FILES_THEN_DB else DB

    @property
    def shadow(self) -> str | None:
        """The other side in a dual phase (None outside them)."""
        if not self.dual:
            return None
        return DB if self is Phase.FILES_THEN_DB else FILES


_OFF = int(Phase.FILES_ONLY)


class SpecError(TypeError):
    """A function's spec does not fit the function (or the call): raised before anything is written."""


@dataclasses.dataclass(frozen=True)
class Spec:
    """How the shim treats one function.

    entity:   name used in events (a table name).
    kind:     "read" or "write" (default: by name, ``load_*`` reads).
    lock:     args -> lock name (or a list of names); held across both sides in phases 2-3.
    key:      args -> record key for events (single-record results).
    records:  "dict" (result keyed by id) or a field name (a list of records).
    mirror:   (result, args, kwargs) -> (args, kwargs) for the secondary write.
    document: for a whole-document pair ``load_<document>`` / ``save_<document>``:
              saves are applied as a delta against what this thread last loaded.
    files:    False when the function has no file counterpart in database
              phases (the candidate alone serves phases 2-4).
    ignore:   fields left out of comparisons (values that legitimately differ
              between two reads that no one lock can order, such as every
              agent's heartbeat).
    """

    entity: str
    kind: str = "read"
    lock: Callable[..., str] | None = None
    key: Callable[..., str] | None = None
    records: str | None = None
    mirror: Callable[[Any, tuple, dict], tuple[tuple, dict]] | None = None
    document: str | None = None
    files: bool = True
    ignore: frozenset[str] = frozenset()


@dataclasses.dataclass
class Outcome:
    """What one side of a call did: its value or its exception, and how long it took."""

    side: str
    value: Any = None
    error: BaseException | None = None
    seconds: float = 0.0

    @classmethod
    def run(cls, side: str, fn: Callable, args: tuple, kwargs: dict, catch: bool) -> "Outcome":
        """Call *fn*; with *catch*, an exception is kept in the outcome instead of raised."""
        t0 = time.perf_counter()
        try:
            value = fn(*args, **kwargs)
        except Exception as exc:
            if not catch:
                raise
            return cls(side, error=exc, seconds=time.perf_counter() - t0)
        return cls(side, value=value, seconds=time.perf_counter() - t0)


@dataclasses.dataclass(frozen=True)
class Mismatch:
    """One record whose two sides differ: its key and field-level diff."""

    key: str
    diff: list[dict]


@dataclasses.dataclass
class Observation:
    """One dual-phase call: the authoritative side (control) and the shadow side (candidate).

    ``candidate`` is None when the shadow side did not run (a read not sampled).
    ``compared`` is true when the two values were compared; ``mismatches``
    lists the records that differed.
    """

    name: str
    spec: Spec
    phase: Phase
    args: tuple
    kwargs: dict
    control: Outcome
    candidate: Outcome | None = None
    compared: bool = False
    mismatches: list[Mismatch] = dataclasses.field(default_factory=list)

    @property
    def entity(self) -> str:
        return self.spec.entity

    @property
    def key(self) -> str | None:
        if self.spec.key is None:
            return None
        try:
            return self.spec.key(*self.args, **self.kwargs)
        except Exception:
            return None


class Experiment:
    """Routes calls of the wrapped functions of one module."""

    def __init__(
        self,
        module: Any,
        candidate: Callable[[int], Any],
        mode: Callable[[], tuple[int, float]],
        lock: Callable[[str], ContextManager] | None,
        observers: Iterable[Callable[[Observation], None]] = (),
        differ: Differ = whole_record_diff,
    ):
        self.module = module
        self.candidate = candidate
        self.mode = mode
        self.lock = lock
        self.observers: list[Callable[[Observation], None]] = list(observers)
        self.differ = differ
        self.originals: dict[str, Callable] = {}
        self._bases = threading.local()

    # -- publishing: the one place events leave ---------------------------------
    def publish(self, obs: Observation) -> None:
        """Log the observation's error and mismatches, then hand it to every observer.

        Never raises: the caller already has the control's result.
        """
        phase = int(obs.phase)
        cand = obs.candidate
        if cand is not None and cand.error is not None:
            log.warning("shadow_error", entity=obs.entity, key=obs.key, phase=phase, op=obs.name, side=cand.side,
                        error=f"{type(cand.error).__name__}: {cand.error}")
        if obs.mismatches:
            timing = {}
            if cand is not None:
                timing = {f"{obs.control.side}_ms": round(obs.control.seconds * 1000, 3),
                          f"{cand.side}_ms": round(cand.seconds * 1000, 3)}
            for m in obs.mismatches:
                log.warning("shadow_mismatch", entity=obs.entity, key=m.key, phase=phase, op=obs.name,
                            authority=obs.phase.authority, diff=m.diff, **timing)
        for observer in self.observers:
            try:
                observer(obs)
            except Exception as exc:  # an observer's bug must never reach the caller
                log.error("shim_observer_failed", observer=repr(observer), error=f"{type(exc).__name__}: {exc}")

    def compare(self, obs: Observation) -> None:
        """Fill ``obs.mismatches`` with one entry per record that differs between the two sides
        (as this experiment's differ sees it: :func:`shim.install`'s ``differ``)."""
        obs.compared = True
        control, candidate = obs.control.value, obs.candidate.value
        if control == candidate:
            return  # the common case: identical shapes, nothing to normalise
        authority, other = obs.phase.authority, obs.phase.shadow
        key = obs.key
        a = split_records(control, obs.spec.records, key)
        b = split_records(candidate, obs.spec.records, key)
        for k in sorted(set(a) | set(b)):
            try:
                found = self.differ(a.get(k), b.get(k), obs.spec.ignore)
            except Exception as exc:  # a differ's bug must never reach the caller: not compared, and said so
                log.error("shim_differ_failed", entity=obs.entity, key=k, op=obs.name,
                          error=f"{type(exc).__name__}: {exc}")
                obs.compared, obs.mismatches = False, []
                return
            if found:
                diff = [{"field": path, authority: va, other: vb} for path, va, vb in found]
                obs.mismatches.append(Mismatch(k, diff))

    def _lock_for(self, spec: Spec, args: tuple, kwargs: dict) -> ContextManager:
        """The file lock held across both sides of a dual-phase call.

        ``spec.lock`` may name several locks (a list): they are taken in the
        order given, which the caller keeps sorted so that no two calls wait
        for each other in a cycle.
        """
        if spec.lock is None or self.lock is None:
            return contextlib.nullcontext()
        names = spec.lock(*args, **kwargs)
        if isinstance(names, str):
            return self.lock(names)
        stack = contextlib.ExitStack()
        with stack:
            for name in names:
                stack.enter_context(self.lock(name))
            return stack.pop_all()

    # -- the wrapper ------------------------------------------------------------
    def wrapper(self, name: str, spec: Spec) -> Callable:
        read = spec.kind == "read"

        def wrapper(wrapped: Callable, instance: Any, args: tuple, kwargs: dict) -> Any:
            # The phase is decided once, here: a call finishes in the phase it started in.
            phase, sample = self.mode()
            if phase == _OFF:  # a plain int: the switched-off path must cost nothing measurable
                return wrapped(*args, **kwargs)
            phase = Phase(phase)
            store = self.candidate(phase)
            if spec.document and not read:
                return self._save_document(spec, name, wrapped, store, phase, args, kwargs)
            cand = getattr(store, name)
            if phase is Phase.DB_ONLY or not spec.files:
                result = cand(*args, **kwargs)
            else:
                control, other = (wrapped, cand) if phase is Phase.FILES_THEN_DB else (cand, wrapped)
                with self._lock_for(spec, args, kwargs):
                    if read:
                        result = self._dual_read(spec, name, phase, sample, control, other, args, kwargs)
                    else:
                        result = self._dual_write(spec, name, phase, control, other, args, kwargs)
            if spec.document and read:
                self._remember(spec.document, result)
            return result

        return wrapper

    def _dual_read(self, spec: Spec, name: str, phase: Phase, sample: float, control: Callable,
                   other: Callable, args: tuple, kwargs: dict) -> Any:
        first = Outcome.run(phase.authority, control, args, kwargs, catch=False)
        if sample >= 1.0 or (sample > 0.0 and random.random() < sample):
            obs = Observation(name, spec, phase, args, kwargs, first,
                              Outcome.run(phase.shadow, other, args, kwargs, catch=True))
            if obs.candidate.error is None:
                self.compare(obs)
            self.publish(obs)
        return first.value

    def _dual_write(self, spec: Spec, name: str, phase: Phase, control: Callable, other: Callable,
                    args: tuple, kwargs: dict) -> Any:
        # The authoritative side: its failure is the caller's, and the other side is not written.
        first = Outcome.run(phase.authority, control, args, kwargs, catch=False)
        obs = Observation(name, spec, phase, args, kwargs, first)
        try:
            a2, k2 = spec.mirror(first.value, args, kwargs) if spec.mirror else (args, kwargs)
        except Exception as exc:
            obs.candidate = Outcome(phase.shadow, error=exc)
        else:
            obs.candidate = Outcome.run(phase.shadow, other, a2, k2, catch=True)
        if obs.candidate.error is None and spec.records and first.value is not None:
            self.compare(obs)
        self.publish(obs)
        return first.value

    # -- whole documents: deltas --------------------------------------------------
    def _remember(self, document: str, value: Any) -> None:
        bases = getattr(self._bases, "docs", None)
        if bases is None:
            bases = self._bases.docs = {}
        bases[document] = copy.deepcopy(value)

    def _save_document(self, spec: Spec, name: str, wrapped: Callable, store: Any, phase: Phase,
                       args: tuple, kwargs: dict) -> None:
        if not args and not kwargs:
            # a save of a module global (``save_polls()``): nothing here says where the document is
            raise SpecError(f"{name}() was called with no argument, but its spec (document={spec.document!r}) "
                            "expects the whole document as its first argument: nothing was written. A function "
                            "that saves a module global is declared with federation.adopt.Save(..., source=NAME)")
        doc = args[0] if args else next(iter(kwargs.values()))
        bases = getattr(self._bases, "docs", None) or {}
        changes = delta(bases.get(spec.document, {}), doc)
        load_name = f"load_{spec.document}"
        file_load = self.originals[load_name]
        db_load = getattr(store, load_name)
        db_save = getattr(store, name)

        def apply_files() -> None:  # always called under the lock taken below
            wrapped(patch(file_load(), changes))

        def apply_db() -> None:
            store.atomic(lambda: db_save(patch(db_load(), changes)))

        if changes:
            if phase is Phase.DB_ONLY:
                apply_db()
            else:
                sides = {FILES: apply_files, DB: apply_db}
                with self._lock_for(spec, args, kwargs):
                    first = Outcome.run(phase.authority, sides[phase.authority], (), {}, catch=False)
                    obs = Observation(name, spec, phase, args, kwargs, first,
                                      Outcome.run(phase.shadow, sides[phase.shadow], (), {}, catch=True))
                self.publish(obs)
        self._remember(spec.document, doc)
        return None
