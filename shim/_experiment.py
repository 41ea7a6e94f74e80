"""The experiment run for each wrapped function: control, candidate, compare, publish.

Phase 1 calls the original.  Phase 2 makes the original (the files) the
control and the candidate store's method of the same name the candidate;
phase 3 swaps them; phase 4 calls only the candidate.  The control always
runs first and its result (or exception) is what the caller gets; the
candidate's failure is published as ``shadow_error`` and never raised.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import random
import threading
import time
from typing import Any, Callable, ContextManager

import structlog

from ._compare import delta, field_diff, normalize, patch, split_records

log = structlog.get_logger("shim")

#: Names of the two sides in published events.
FILES, DB = "files", "db"


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
    ignore:   fields only one side has, left out of comparisons.
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


class Experiment:
    """Routes calls of the wrapped functions of one module."""

    def __init__(
        self,
        module: Any,
        candidate: Callable[[int], Any],
        mode: Callable[[], tuple[int, float]],
        lock: Callable[[str], ContextManager] | None,
    ):
        self.module = module
        self.candidate = candidate
        self.mode = mode
        self.lock = lock
        self.originals: dict[str, Callable] = {}
        self._bases = threading.local()

    # -- publishing -------------------------------------------------------------
    def _key(self, spec: Spec, args: tuple, kwargs: dict) -> str | None:
        if spec.key is None:
            return None
        try:
            return spec.key(*args, **kwargs)
        except Exception:
            return None

    def publish_error(self, spec: Spec, op: str, phase: int, side: str, exc: BaseException,
                      args: tuple, kwargs: dict) -> None:
        log.warning("shadow_error", entity=spec.entity, key=self._key(spec, args, kwargs), phase=phase, op=op,
                    side=side, error=f"{type(exc).__name__}: {exc}")

    def compare(self, spec: Spec, op: str, phase: int, control: Any, candidate: Any, args: tuple,
                kwargs: dict, timings: tuple[float, float] | None = None) -> int:
        """Publish one ``shadow_mismatch`` per differing record; the number published."""
        if control == candidate and not spec.ignore:
            return 0  # the common case: identical shapes, nothing to normalise
        authority, other = (FILES, DB) if phase == 2 else (DB, FILES)
        key = self._key(spec, args, kwargs)
        a = split_records(control, spec.records, key)
        b = split_records(candidate, spec.records, key)
        published = 0
        for k in sorted(set(a) | set(b)):
            x = normalize(a.get(k), spec.ignore)
            y = normalize(b.get(k), spec.ignore)
            if x == y:
                continue
            diff = [{"field": path, authority: va, other: vb} for path, va, vb in field_diff(x, y)]
            extra = {}
            if timings:
                extra = {f"{authority}_ms": round(timings[0] * 1000, 3), f"{other}_ms": round(timings[1] * 1000, 3)}
            log.warning("shadow_mismatch", entity=spec.entity, key=k, phase=phase, op=op, authority=authority,
                        diff=diff, **extra)
            published += 1
        return published

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
            phase, sample = self.mode()
            if phase == 1:
                return wrapped(*args, **kwargs)
            store = self.candidate(phase)
            if spec.document and not read:
                return self._save_document(spec, name, wrapped, store, phase, args, kwargs)
            cand = getattr(store, name)
            if phase == 4 or not spec.files:
                result = cand(*args, **kwargs)
            else:
                control, other = (wrapped, cand) if phase == 2 else (cand, wrapped)
                with self._lock_for(spec, args, kwargs):
                    if read:
                        result = self._dual_read(spec, name, phase, sample, control, other, args, kwargs)
                    else:
                        result = self._dual_write(spec, name, phase, control, other, args, kwargs)
            if spec.document and read:
                self._remember(spec.document, result)
            return result

        return wrapper

    def _dual_read(self, spec, name, phase, sample, control, other, args, kwargs):
        t0 = time.perf_counter()
        result = control(*args, **kwargs)
        t1 = time.perf_counter()
        if sample >= 1.0 or (sample > 0.0 and random.random() < sample):
            side = DB if phase == 2 else FILES
            try:
                shadow = other(*args, **kwargs)
            except Exception as exc:
                self.publish_error(spec, name, phase, side, exc, args, kwargs)
                return result
            t2 = time.perf_counter()
            self.compare(spec, name, phase, result, shadow, args, kwargs, (t1 - t0, t2 - t1))
        return result

    def _dual_write(self, spec, name, phase, control, other, args, kwargs):
        result = control(*args, **kwargs)  # the authoritative side: its failure is the caller's
        side = DB if phase == 2 else FILES
        try:
            a2, k2 = spec.mirror(result, args, kwargs) if spec.mirror else (args, kwargs)
            shadow = other(*a2, **k2)
        except Exception as exc:
            self.publish_error(spec, name, phase, side, exc, args, kwargs)
            return result
        if spec.records and result is not None:
            self.compare(spec, name, phase, result, shadow, args, kwargs)
        return result

    # -- whole documents: deltas --------------------------------------------------
    def _remember(self, document: str, value: Any) -> None:
        bases = getattr(self._bases, "docs", None)
        if bases is None:
            bases = self._bases.docs = {}
        bases[document] = copy.deepcopy(value)

    def _save_document(self, spec, name, wrapped, store, phase, args, kwargs):
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
            if phase == 4:
                apply_db()
            else:
                first, second = (apply_files, apply_db) if phase == 2 else (apply_db, apply_files)
                with self._lock_for(spec, args, kwargs):
                    first()
                    try:
                        second()
                    except Exception as exc:
                        self.publish_error(spec, name, phase, DB if phase == 2 else FILES, exc, args, kwargs)
        self._remember(spec.document, doc)
        return None
