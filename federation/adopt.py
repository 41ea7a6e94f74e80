"""Adopting the shim on your own code: one declaration per persistence function.

A codebase in the migration plan's own style (module globals, zero-argument
``load_polls()`` / ``save_polls()``, JSON files in the legacy layout of
DESIGN.md) says, per function, which legacy document it loads, saves or
claims and where the value is; the federation does the rest with its own
entity descriptions, SQL store, locks and control plane::

    from federation import adopt
    adopt.install(core, {
        "load_polls":  adopt.Load("polls", into="active_polls"),
        "save_polls":  adopt.Save("polls", source="active_polls"),
        "check_inbox": adopt.Claim("inbox", key="agent"),
    })

(``examples/seed_core/adoption.py`` declares a whole plan-style core this way.)

What every declared call gets (CONTRACT.md, "Adopting the shim on your own code"):

- it holds its document's file lock (re-entrant within a thread, so a wrapped
  ``save_context`` may call its wrapped ``load_context``), in every phase;
- a whole-document save (``Save("polls", source=...)``) writes only what
  changed since the same thread loaded the document, on both sides, so
  concurrent read-modify-writes lose nothing (phase 1 included: the files);
- phase 2 runs the adopter's function (the files) first and mirrors it into
  the database; phase 3 the database first, a ``Load`` answering from it (into
  the module global for ``into=``); the other side is compared, and mismatches
  are logged and counted by the project's own machinery (the shim's
  ``Experiment.publish``, the rollout counters);
- where a record only exists once the adopter's function wrote it (``Save``
  without ``source``), "database first" means the database decides: if its
  write fails, the file is put back as it was and the call fails;
- phase 4 is not run by adopted code: ``rollout set 4`` is refused while an
  adopted process is alive (it is announced in the fleet with the modules it
  adopted); a process pinned to phase 4 by its environment keeps phase 3 for
  its declared functions and says so once.  To finish, call ``federation.*``.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import inspect
import marshal
import os
import random
import stat
import threading
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import wrapt

from shim import DB, FILES, Experiment, Observation, Outcome, Phase, Spec, delta, patch

from .domain import clock as _clock
from .domain import layout as _layout
from .domain.compare import record_diff
from .stores import files as _files
from . import core, rollout
from ._logging import library_logger
from ._wiring import candidate
from .domain.entities import (CONTEXT, MESSAGES, POLLS, PROFILES, SESSION_ARTIFACTS, SESSION_REVIEWS,
                              SESSION_ROLES, SESSIONS, document_lock)
from .errors import ConfigError, CorruptFileError, StorageError

__all__ = ["Load", "Save", "Claim", "install", "install_when_imported", "uninstall", "installed",
           "DeclarationError", "AdoptedWriteError", "ENTITIES"]

log = library_logger("federation.adopt")


class DeclarationError(ConfigError):
    """A declaration that does not fit the module it is installed on (raised by :func:`install`)."""


class AdoptedWriteError(StorageError):
    """What an adopted function wrote cannot be put into the database (an invalid legacy record)."""


# ---------------------------------------------------------------------------
# declarations


@dataclasses.dataclass(frozen=True)
class Load:
    """The function reads one legacy document: its return value, or (``into``) the module global it sets."""

    entity: str
    key: str | None = None
    into: str | None = None


@dataclasses.dataclass(frozen=True)
class Save:
    """The function writes one legacy document: the module global ``source``, or (no source) what it wrote."""

    entity: str
    key: str | None = None
    source: str | None = None


@dataclasses.dataclass(frozen=True)
class Claim:
    """The function reads and removes the unread messages of an inbox, returning them."""

    entity: str
    key: str | None = None


@dataclasses.dataclass(frozen=True)
class _Kind:
    """What the federation knows of one declarable entity: its legacy document and its database side."""

    document: str          #: the legacy document kind (entities.Entity.document)
    table: str             #: the name in events and counts
    verbs: tuple[type, ...]
    keyed: bool = True     #: one document per key (an agent, a session); polls.json is one for all
    records: str | None = None  #: how a value splits into records for comparison (shim.Spec.records)


#: The entities a declaration may name.
ENTITIES: dict[str, _Kind] = {
    "polls": _Kind("polls", "polls", (Load, Save), keyed=False, records="dict"),
    "session": _Kind("session", "sessions", (Load, Save)),
    "context": _Kind("context", "context", (Load, Save)),
    "expertise": _Kind("expertise", "expertise", (Load, Save)),
    "profile": _Kind("profile", "profiles", (Load, Save)),
    "message": _Kind("message", "messages", (Save,)),
    "inbox": _Kind("message", "messages", (Load, Claim), records="id"),
}


# ---------------------------------------------------------------------------
# the legacy record as the federation reads it (what the database side returns), for comparisons


def _legacy_view(entity: str, owner: str | None, value: Any) -> Any:
    """*value* read by an adopter's function, with the defaults the database side applies."""
    if not isinstance(value, (dict, list)):
        return value
    if entity == "polls" and isinstance(value, dict):
        return {pid: {**POLLS.record(p, fallback={"id": pid}), "votes": dict(p.get("votes") or {})}
                if isinstance(p, dict) else p for pid, p in value.items()}
    if entity == "context" and isinstance(value, dict):
        return CONTEXT.record(value, given={"agent": owner})
    if entity == "profile" and isinstance(value, dict):
        return PROFILES.record(value, given={"agent": owner})
    if entity == "expertise" and isinstance(value, dict):
        domains = value.get("domains") or []
        return {"agent": owner, "domains": sorted(domains), "updated_at": value.get("updated_at")} if domains \
            else None
    if entity == "session" and isinstance(value, dict):
        session = SESSIONS.record(value, fallback={"id": owner})
        for part in (SESSION_ROLES, SESSION_ARTIFACTS, SESSION_REVIEWS):
            session[part.container] = dict(value.get(part.container) or {})
        return session
    if entity == "inbox" and isinstance(value, list):
        return sorted((MESSAGES.record(m, fallback={"recipient": owner}) if isinstance(m, dict) else m
                       for m in value), key=lambda m: (str(m.get("timestamp") or ""), str(m.get("id")))
                      if isinstance(m, dict) else ("", ""))
    return value


def _db_load(store: Any, entity: str, owner: str | None) -> Any:
    """The database's answer to a Load of *entity*."""
    if entity == "polls":
        return store.load_polls()
    if entity == "inbox":
        return store.load_inbox(owner)
    method = {"context": store.load_context, "expertise": store.load_expertise, "profile": store.load_profile,
              "session": store.load_session}[entity]
    return method(owner)


def _copy(value: Any) -> Any:
    """A deep copy of a JSON document (marshal: ten times faster than copy.deepcopy on a polls.json)."""
    try:
        return marshal.loads(marshal.dumps(value))
    except ValueError:  # a type marshal does not know: the general copy
        return copy.deepcopy(value)


# ---------------------------------------------------------------------------
# installing


class _Adoption:
    """The declared functions of one module, wrapped."""

    def __init__(self, module: Any, declarations: Mapping[str, Any]):
        self.module = module
        self.name = module.__name__
        self.originals: dict[str, Callable] = {}
        self.plans: dict[str, _Plan] = {}
        # the shim's own publishing (events, then observers): mismatches compared, logged and counted as for our core
        self.experiment = Experiment(module, candidate, rollout.mode, None, (rollout.observe,), record_diff)
        self._bases = threading.local()
        self._last_base: dict[str, Any] = {}
        for fname, decl in declarations.items():
            self.plans[fname] = _Plan.check(module, fname, decl)

    def wrap(self) -> None:
        for fname, plan in self.plans.items():
            self.originals[fname] = getattr(self.module, fname)
            wrapt.wrap_function_wrapper(self.module, fname, self._wrapper(plan))

    # -- the thread's base of each whole document --------------------------------
    def base(self, document: str) -> Any:
        bases = getattr(self._bases, "docs", None) or {}
        if document in bases:
            return bases[document]
        # a thread that never loaded it: what this process loaded last (a load at import time, say)
        return self._last_base.get(document, {})

    def remember(self, document: str, value: Any) -> None:
        bases = getattr(self._bases, "docs", None)
        if bases is None:
            bases = self._bases.docs = {}
        bases[document] = _copy(value)
        self._last_base[document] = bases[document]

    def _wrapper(self, plan: "_Plan") -> Callable:
        def wrapper(wrapped: Callable, instance: Any, args: tuple, kwargs: dict) -> Any:
            try:
                owner = plan.owner(args, kwargs)
            except TypeError:
                return wrapped(*args, **kwargs)  # a bad call: the adopter's function says what is wrong
            phase = _phase_of_call()
            call = _Call(self, plan, wrapped, args, kwargs, owner, phase)
            with core.file_lock(document_lock(plan.kind.document, owner or "")):
                return call.run()

        return wrapper


_warned_phase_4 = False  # said once per process


def _phase_of_call() -> tuple[Phase, float]:
    """The phase of this call (decided once, at its start), as for the project's own code.

    Adopted functions never run phase 4 (their file code would have to go): a
    process pinned there keeps phase 3 for them, and says so once.
    """
    global _warned_phase_4
    phase, sample = rollout.mode()
    if phase == 4:
        if not _warned_phase_4:
            _warned_phase_4 = True
            log.warning("adopt_phase_4_runs_as_3", pid=os.getpid(),
                        detail="adopted functions keep writing the files in phase 4; finish by calling federation.*")
        phase = 3
    return Phase(phase), sample


@dataclasses.dataclass
class _Plan:
    """One checked declaration: the function, its entity, where its key and value are."""

    name: str
    decl: Any
    entity: str
    kind: _Kind
    signature: inspect.Signature | None
    spec: Spec
    owner_of: Callable[[tuple, dict], str | None]

    @classmethod
    def check(cls, module: Any, fname: str, decl: Any) -> "_Plan":
        where = f"{module.__name__}.{fname}"
        fn = getattr(module, fname, None)
        if not callable(fn):
            raise DeclarationError(f"{where}: the module has no function {fname!r} to adopt")
        if not isinstance(decl, (Load, Save, Claim)):
            raise DeclarationError(f"{where}: declare it with adopt.Load, adopt.Save or adopt.Claim, "
                                   f"not {type(decl).__name__}")
        verb = type(decl).__name__
        kind = ENTITIES.get(decl.entity)
        if kind is None:
            raise DeclarationError(f"{where}: unknown entity {decl.entity!r}: use one of {', '.join(ENTITIES)}")
        if type(decl) not in kind.verbs:
            raise DeclarationError(f"{where}: {verb}({decl.entity!r}) is not something the federation does: "
                                   f"{decl.entity} takes {' or '.join(v.__name__ for v in kind.verbs)}")
        try:
            signature = inspect.signature(fn)
        except (TypeError, ValueError):
            signature = None
        if kind.keyed:
            if decl.key is None:
                owner = {"message": "recipient", "session": "session id"}.get(decl.entity, "agent")
                raise DeclarationError(f"{where}: {verb}({decl.entity!r}) needs key=: the parameter naming "
                                       f"the {owner}")
            if signature is not None and decl.key not in signature.parameters:
                raise DeclarationError(f"{where}: key={decl.key!r} is not a parameter of {fname}"
                                       f"{signature}")
        elif decl.key is not None:
            raise DeclarationError(f"{where}: key={decl.key!r}: {decl.entity} is one document for everyone, "
                                   "it has no key")
        glob = getattr(decl, "into", None) or getattr(decl, "source", None)
        if glob is not None:
            arg = "into" if isinstance(decl, Load) else "source"
            if kind.keyed:
                raise DeclarationError(f"{where}: {arg}={glob!r}: only a whole document (polls) lives in a module "
                                       "global")
            if glob not in vars(module) or callable(vars(module)[glob]):
                raise DeclarationError(f"{where}: {arg}={glob!r} is not a module global of {module.__name__}")
        owner_of = cls._owner_getter(signature, decl.key)
        spec = Spec(entity=kind.table, kind="read" if isinstance(decl, Load) else "write",
                    key=(lambda *a, **k: owner_of(a, k)) if decl.key else None, records=kind.records,
                    document=decl.entity if not kind.keyed else None)
        return cls(fname, decl, decl.entity, kind, signature, spec, owner_of)

    @staticmethod
    def _owner_getter(signature: inspect.Signature | None, key: str | None) -> Callable[[tuple, dict], str | None]:
        if key is None:
            return lambda args, kwargs: None
        if signature is None:  # a builtin without a signature: the key is its first argument
            return lambda args, kwargs: kwargs[key] if key in kwargs else args[0]

        def owner(args: tuple, kwargs: dict) -> str:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            return bound.arguments[key]

        return owner

    def owner(self, args: tuple, kwargs: dict) -> str | None:
        """The key argument of this call (a TypeError when the call does not fit the function: the caller's)."""
        try:
            return self.owner_of(args, kwargs)
        except (KeyError, IndexError):
            raise TypeError(f"{self.name}() was called without its {self.decl.key!r} argument") from None


# ---------------------------------------------------------------------------
# one call


class _Call:
    """One call of a declared function, under its document's lock."""

    def __init__(self, adoption: _Adoption, plan: _Plan, wrapped: Callable, args: tuple, kwargs: dict,
                 owner: str | None, mode: tuple[Phase, float]):
        self.a, self.plan, self.wrapped, self.owner = adoption, plan, wrapped, owner
        self.args, self.kwargs = args, kwargs
        self.phase, self.sample = mode
        self.decl = plan.decl

    def run(self) -> Any:
        # the store first, as for the project's own code: the schema exists before either side writes, so a
        # new federation's database is known to need no backfill (its files come later)
        self._store = None if self.phase is Phase.FILES_ONLY else candidate(int(self.phase))
        if isinstance(self.decl, Load):
            return self.load()
        if isinstance(self.decl, Claim):
            return self.claim()
        if self.decl.source is not None:
            return self.save_document()
        if self.plan.entity == "polls":
            return self.save_written_polls()
        if self.plan.entity == "message":
            return self.save_written_messages()
        return self.save_written_record()

    # -- helpers -------------------------------------------------------------------
    @property
    def tree(self) -> _files.Tree:
        return core.tree()

    def store(self) -> Any:
        return self._store

    def sampled(self) -> bool:
        return self.sample >= 1.0 or (self.sample > 0.0 and random.random() < self.sample)

    def publish(self, control: Outcome, other: Outcome | None, compare: bool = False) -> None:
        obs = Observation(self.plan.name, self.plan.spec, self.phase, self.args, self.kwargs, control, other)
        if compare and other is not None and other.error is None and control.error is None:
            self.a.experiment.compare(obs)
        self.a.experiment.publish(obs)

    def call_theirs(self, *, retry_torn: bool = False) -> Any:
        """The adopter's function; a read that meets a file torn by a non-atomic writer is re-read briefly."""
        if not retry_torn:
            return self.wrapped(*self.args, **self.kwargs)
        failed: ValueError | None = None
        for pause in (0.0, *_files.TORN_PAUSES):
            if pause:  # never sleep(0): on a loaded machine it gives the core away for a whole time slice
                time.sleep(pause)
            try:
                value = self.wrapped(*self.args, **self.kwargs)
            except ValueError as exc:  # json.JSONDecodeError: a file caught mid-write (or really corrupt)
                failed = exc
                continue
            if failed is not None:
                _files.note_torn(f"{self.a.name}.{self.plan.name}", recovered=True)
            return value
        _files.note_torn(f"{self.a.name}.{self.plan.name}", recovered=False, error=failed)
        raise failed  # still unreadable: the adopter's own exception, as without the shim

    def global_value(self, name: str) -> Any:
        return getattr(self.a.module, name)

    # -- Load ----------------------------------------------------------------------
    def files_value(self) -> tuple[Any, Any]:
        """(what the adopter's function returned, the document it read)."""
        returned = self.call_theirs(retry_torn=True)
        into = self.decl.into
        return returned, (self.global_value(into) if into else returned)

    def load(self) -> Any:
        entity, into = self.plan.entity, self.decl.into
        if self.phase is Phase.FILES_ONLY or self.phase is Phase.FILES_THEN_DB:
            t0 = time.perf_counter()
            returned, doc = self.files_value()
            if self.phase is Phase.FILES_THEN_DB and self.sampled():
                files = Outcome(FILES, _legacy_view(entity, self.owner, doc), seconds=time.perf_counter() - t0)
                self.publish(files, Outcome.run(DB, _db_load, (self.store(), entity, self.owner), {}, catch=True),
                             compare=True)
            if not self.plan.kind.keyed:
                self.a.remember(entity, doc)
            return returned
        # phase 3: the database answers; the adopter's function (the files) is the shadow
        store = self.store()
        db = Outcome.run(DB, _db_load, (store, entity, self.owner), {}, catch=False)
        if self.sampled():
            t0 = time.perf_counter()
            try:
                doc = self.files_value()[1]
            except Exception as exc:  # noqa: BLE001 - the shadow side never fails the call
                files = Outcome(FILES, error=exc, seconds=time.perf_counter() - t0)
            else:
                files = Outcome(FILES, _legacy_view(entity, self.owner, doc), seconds=time.perf_counter() - t0)
            self.publish(db, files, compare=True)
        value = db.value
        if not self.plan.kind.keyed:
            self.a.remember(entity, value)
        if into:
            setattr(self.a.module, into, _copy(value))  # after the shadow read, which set it from the files
            return getattr(self.a.module, into)
        return value

    # -- Save of a module global: a delta against what this thread loaded ----------------
    def save_document(self) -> Any:
        entity, source = self.plan.entity, self.decl.source
        mine = self.global_value(source)
        changes = delta(self.a.base(entity), mine)
        if not changes:
            return None
        returned = None

        def files_side() -> Any:
            current = _files.read_json(self.tree.polls_file, dict, {}, root=self.tree.root)
            merged = patch(current, changes, in_place=True)  # just read: no one else holds it
            setattr(self.a.module, source, merged)  # what the adopter's function writes: theirs, merged
            try:
                return self.wrapped(*self.args, **self.kwargs)
            finally:
                setattr(self.a.module, source, mine)

        if self.phase is Phase.FILES_ONLY:
            returned = files_side()
        else:
            store = self.store()

            def db_side() -> None:
                store.atomic(lambda: store.save_polls(patch(store.load_polls(), changes, in_place=True)))

            sides = {FILES: files_side, DB: db_side}
            first = Outcome.run(self.phase.authority, sides[self.phase.authority], (), {}, catch=False)
            other = Outcome.run(self.phase.shadow, sides[self.phase.shadow], (), {}, catch=True)
            self.publish(first, other)
            returned = first.value if self.phase is Phase.FILES_THEN_DB else other.value
        self.a.remember(entity, mine)
        return returned

    # -- Save of what the function wrote ---------------------------------------------------
    def written(self, before: _Snapshot, to_db: Callable[[], None]) -> Any:
        """Run the adopter's function and put what it wrote into the database, in the phase's order."""
        if self.phase is Phase.FILES_ONLY:
            return self.call_theirs()
        if self.phase is Phase.FILES_THEN_DB:
            files = Outcome.run(FILES, self.call_theirs, (), {}, catch=False)
            self.publish(files, Outcome.run(DB, to_db, (), {}, catch=True))
            return files.value
        # phase 3: the record exists only once their function wrote it, so the database decides after it:
        # if the database refuses, the files are put back as they were and the call fails
        try:
            files = Outcome.run(FILES, self.call_theirs, (), {}, catch=False)
        except BaseException:
            before.restore()
            raise
        try:
            db = Outcome.run(DB, to_db, (), {}, catch=False)
        except BaseException:
            before.restore()
            raise
        self.publish(db, files)
        return files.value

    def save_written_record(self) -> Any:
        if self.phase is Phase.FILES_ONLY:
            return self.call_theirs()
        kind = self.plan.kind.document
        path = _document_path(self.tree, kind, self.owner)
        before = _Snapshot.of(path, self.tree.root)
        return self.written(before, lambda: _files_to_db(self.store(), self.tree, [path], {(kind, self.owner)}))

    def save_written_polls(self) -> Any:
        if self.phase is Phase.FILES_ONLY:
            return self.call_theirs()
        path = self.tree.polls_file
        root = self.tree.root
        before = _Snapshot.of(path, root)
        old = _files.read_json(path, dict, {}, root=root)

        def to_db() -> None:
            changes = delta(old, _files.read_json(path, dict, {}, root=root))
            if changes:
                store = self.store()
                store.atomic(lambda: store.save_polls(patch(store.load_polls(), changes, in_place=True)))

        return self.written(before, to_db)

    def save_written_messages(self) -> Any:
        if self.phase is Phase.FILES_ONLY:
            return self.call_theirs()
        inbox, root = self.tree.inbox(self.owner), self.tree.root
        before = _Snapshot.of_folder(inbox, root)

        def to_db() -> None:
            new = sorted(_json_names(inbox, root) - set(before.files))
            messages = []
            for name in new:
                data = _files.read_json(inbox / name, root=root)
                if data is None:
                    continue
                messages.append(MESSAGES.record(data, fallback={"id": _layout.stem(name), "recipient": self.owner}))
            store = self.store()
            store.atomic(lambda: [store.save_message(m) for m in messages])

        return self.written(before, to_db)

    # -- Claim -------------------------------------------------------------------------------
    def claim(self) -> Any:
        agent = self.owner
        inbox, root = self.tree.inbox(agent), self.tree.root
        if self.phase is Phase.FILES_ONLY:
            return self.call_theirs()
        store = self.store()
        if self.phase is Phase.FILES_THEN_DB:
            before = _json_names(inbox, root)
            t0 = time.perf_counter()
            returned = self.call_theirs()
            files = Outcome(FILES, _legacy_view("inbox", agent, returned), seconds=time.perf_counter() - t0)
            claimed = sorted(_layout.stem(name) for name in before - _json_names(inbox, root))
            db = Outcome.run(DB, store.claim_inbox, (agent,), {"ids": claimed}, catch=True)
            self.publish(files, db, compare=True)
            return returned
        # phase 3: the database claims; the adopter's function then clears the same messages from the files
        before = _Snapshot.of_folder(inbox, root)
        db = Outcome.run(DB, store.claim_inbox, (agent,), {}, catch=False)
        claimed = {m["id"] for m in db.value}
        files = Outcome.run(FILES, self.call_theirs, (), {}, catch=True)
        # what the database did not claim stays unread in the files; what it claimed is gone from them
        before.restore(only=[n for n in before.files if _layout.stem(n) not in claimed])
        for mid in claimed:
            with contextlib.suppress(Exception):
                _files.remove(inbox / _layout.document_name(mid), root=root)
        if files.error is None:
            files.value = _legacy_view("inbox", agent, files.value)
        self.publish(db, files, compare=True)
        return db.value


# ---------------------------------------------------------------------------
# files before a call, to put back when the database refuses


def _json_names(folder: Path, root: Path) -> set[str]:
    """The message files of *folder*, through the gate: regular files only (a link or FIFO there is never
    snapshotted, restored or removed), none when the folder is missing or is a link."""
    try:
        return {n for n, st in _files.scan_dir(folder, root=root)
                if _layout.is_document_name(n) and stat.S_ISREG(st.st_mode)}
    except (CorruptFileError, NotADirectoryError):
        return set()


def _document_path(tree: _files.Tree, kind: str, owner: str) -> Path:
    return _layout.document_file(tree, kind, owner, owner)


@dataclasses.dataclass
class _Snapshot:
    """The bytes of a file (None: absent), or of every message file of a folder."""

    path: Path
    files: dict[str, bytes | None]
    root: Path
    folder: bool = False

    @classmethod
    def of(cls, path: Path, root: Path) -> "_Snapshot":
        return cls(path, {path.name: _read_bytes(path, root)}, root)

    @classmethod
    def of_folder(cls, folder: Path, root: Path) -> "_Snapshot":
        return cls(folder, {n: _read_bytes(folder / n, root) for n in _json_names(folder, root)}, root, folder=True)

    def restore(self, only: list[str] | None = None) -> None:
        """Put the files back as they were (a file that did not exist is removed); new message files go."""
        folder = self.path if self.folder else self.path.parent
        names = list(self.files) if only is None else only
        for name in names:
            _put_bytes(folder / name, self.files.get(name), self.root)
        if self.folder and only is None:
            for name in _json_names(folder, self.root) - set(self.files):
                _put_bytes(folder / name, None, self.root)


def _read_bytes(path: Path, root: Path) -> bytes | None:
    """The bytes of a legacy file through the gate (no link followed, never a FIFO); None when absent."""
    return _files.read_regular(path, root=root)


def _put_bytes(path: Path, raw: bytes | None, root: Path) -> None:
    if raw is None:
        _files.remove(path, root=root)
        return
    _files.write_bytes(path, raw, root=root)  # a temp file made with O_EXCL + rename, through the gate


def _files_to_db(store: Any, tree: _files.Tree, paths: list[Path], docs: set[tuple[str, str]]) -> None:
    """Make the database rows of the legacy documents *docs* equal what their files hold now."""
    from .transfer.rows import read_files
    from .transfer.sync import repair_documents

    rows = read_files(tree, paths)
    if rows.invalid:
        bad = rows.invalid[0]
        raise AdoptedWriteError(f"{bad['path']}: {bad['reason']}: the database keeps its record")
    store.db.write(lambda tx: repair_documents(tx, rows, docs, _clock.now()))


# ---------------------------------------------------------------------------
# the public calls

_adopted: dict[str, _Adoption] = {}
_install_lock = threading.Lock()


def install(module: Any, declarations: Mapping[str, Any]) -> None:
    """Adopt the shim on the already imported *module*: wrap each declared function (idempotent).

    Every declaration is checked first; one that does not fit raises
    :class:`DeclarationError` naming the function (and the parameter), and then
    nothing is wrapped.
    """
    if not isinstance(declarations, Mapping):
        raise DeclarationError(f"{getattr(module, '__name__', module)!r}: declarations must be a mapping "
                               "{function name: adopt.Load/Save/Claim(...)}")
    with _install_lock:
        name = module.__name__
        if name in _adopted:
            return
        adoption = _Adoption(module, declarations)  # checks every declaration before anything is wrapped
        adoption.wrap()
        _adopted[name] = adoption
    rollout.announce_adopted(name)


def install_when_imported(module_name: str, declarations: Mapping[str, Any]) -> None:
    """Adopt the shim on *module_name* as soon as it is imported (at once if it already is).

    Call it before anything imports the module, so that no caller holds an
    unwrapped ``from pkg.core import save_polls``.
    """
    wrapt.register_post_import_hook(lambda module: install(module, declarations), module_name)


def uninstall(module: Any) -> None:
    """Put the module's original functions back."""
    with _install_lock:
        adoption = _adopted.pop(module.__name__, None)
    if adoption is None:
        return
    for fname, original in adoption.originals.items():
        setattr(module, fname, original)
    rollout.announce_adopted(module.__name__, adopted=False)


def installed(module: Any) -> bool:
    return module.__name__ in _adopted

