"""One call of a declared function, under its document's lock: the phase's order of the sides, deltas, comparison."""

from __future__ import annotations

import contextlib
import os
import random
import time
from typing import Any, Callable

from shim import DB, FILES, Observation, Outcome, Phase

from ..domain import layout as _layout
from ..stores import files as _files
from .._wiring import candidate
from ..domain.entities import MESSAGES
from ._declare import Claim, LIST_INBOX, Load
from ._plan import _Plan
from ._saves import _Saves
from ._snapshot import _Snapshot, _document_path, _json_names, _read_doc
from ._values import _copy, _db_load, _is_read, _legacy_view, _unread


# ---------------------------------------------------------------------------
# one call

class _Call(_Saves):
    """One call of a declared function, under its document's lock."""

    def __init__(self, adoption: Any, plan: _Plan, wrapped: Callable, args: tuple, kwargs: dict,
                 owner: str | None, mode: tuple[Phase, float], lock: str, tree: _files.Tree):
        self.a, self.plan, self.wrapped, self.owner, self.lock = adoption, plan, wrapped, owner, lock
        self.args, self.kwargs = args, kwargs
        self.phase, self.sample = mode
        self.decl = plan.decl
        self.tree = tree  # the configured root's, taken once for the call

    def run(self) -> Any:
        # the store first, as for the project's own code: the schema exists before either side writes, so a
        # new federation's database is known to need no backfill (its files come later)
        self._store = None if self.phase is Phase.FILES_ONLY else candidate(int(self.phase))
        if isinstance(self.decl, Load):
            return self.load()
        if isinstance(self.decl, Claim):
            return self.claim()
        if self.decl.shape == "list":
            return self.save_list()
        if self.decl.source is not None:
            return self.save_document() if not self.plan.kind.keyed else self.save_keyed_source()
        if self.plan.entity == "polls":
            return self.save_written_polls()
        if self.plan.entity == "message":
            return self.save_written_messages()
        return self.save_written_record()

    # -- helpers -------------------------------------------------------------------
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
                _files.note_torn(self.document_name(), recovered=True)
            return value
        _files.note_torn(self.document_name(), recovered=False, error=failed)
        raise failed  # still unreadable: the adopter's own exception, as without the shim

    def document_name(self) -> str:
        """The legacy document of this call, below the root (where a torn read is counted)."""
        tree = self.tree
        try:
            if not self.plan.kind.keyed:
                path = tree.polls_file
            elif self.decl.shape == "list":
                path = tree.node(self.owner) / LIST_INBOX
            elif self.plan.kind.document == "message":
                path = tree.inbox(self.owner)
            else:
                path = _document_path(tree, self.plan.kind.document, self.owner)
            return os.path.relpath(path, tree.root)
        except Exception:  # noqa: BLE001 - an odd key: the function's name says where
            return f"{self.a.name}.{self.plan.name}"

    def document_path(self) -> Any:
        """The one file of this call's document (None: a folder of message files, or an odd key)."""
        doc = self.doc()
        return None if doc is None else doc.path

    def doc(self) -> Any:
        """The gate's handle of this call's document file, for its stamps (None: no one file)."""
        try:
            return self._doc
        except AttributeError:
            pass
        key = self.base_key
        doc = self.a._docs.get((self.tree, key))  # the common case, without a call
        if doc is None:
            path = self._document_path()
            doc = None if path is None else self.a.doc(self.tree, key, self.lock, path)
        self._doc = doc
        return doc

    def _document_path(self) -> Any:
        tree = self.tree
        try:
            if not self.plan.kind.keyed:
                return tree.polls_file
            if self.decl.shape == "list":
                return tree.node(self.owner) / LIST_INBOX
            if self.plan.kind.document == "message":
                return None
            return _document_path(tree, self.plan.kind.document, self.owner)
        except Exception:  # noqa: BLE001 - an odd key: the adopter's function says what is wrong
            return None

    def look(self) -> Any:
        """This thread's look at its document's file and the fleet's stamp of it (under the lock it holds);
        a file that no process of the fleet wrote as it is now is counted (a writer outside the fleet)."""
        doc = self.doc()
        if doc is None:
            return None
        look = _files.stamp_look(self.tree, self.lock, doc)
        if look is not None and look.outside:
            _files.note_outside(self.tree, self.lock, doc.path, look)
            look = _files.stamp_look(self.tree, self.lock, doc)
        return look

    def stamp(self, before: Any = None) -> Any:
        """The fleet wrote this call's document (the adopter's function, under the lock): stamped.  *before*:
        this call's look, taken under the same hold of the lock and with no stamp written since."""
        doc = self.doc()
        return None if doc is None else _files.stamp_written(self.tree, self.lock, doc, before)

    def unchanged(self, look: Any) -> bool:
        """*look* (taken now) equals this thread's look at its last load or save of the document: nobody wrote
        the file since, which holds what this thread's base of it holds."""
        return look is not None and look.known and look == self.a.look(self.base_key)

    def global_value(self, name: str) -> Any:
        return getattr(self.a.module, name)

    # -- Load ----------------------------------------------------------------------
    @property
    def base_key(self) -> Any:
        """The name of this call's document among the thread's bases."""
        if not self.plan.kind.keyed:
            return self.plan.entity
        try:
            return self._base_key
        except AttributeError:
            self._base_key = ("inbox-list" if self.decl.shape == "list" else self.plan.entity, self.owner)
            return self._base_key

    def view(self, doc: Any) -> Any:
        """*doc* read by the adopter's function, as the database shows it (for comparisons)."""
        if self.decl.shape == "list":
            doc = _unread(doc)
        return _legacy_view(self.plan.entity, self.owner, doc)

    def cached(self) -> Any:
        """The document in the ``into`` global after the adopter's load (a keyed cache: its entry)."""
        into = self.decl.into
        value = self.global_value(into)
        if self.plan.kind.keyed:
            return value.get(self.owner) if isinstance(value, dict) else None
        return value

    def files_value(self) -> tuple[Any, Any]:
        """(what the adopter's function returned, the document it read)."""
        returned = self.call_theirs(retry_torn=True)
        return returned, (self.cached() if self.decl.into else returned)

    def db_load(self, store: Any) -> Any:
        return _db_load(store, self.plan.entity, self.owner)

    def backfill_list(self) -> bool:
        """A list-file inbox's unread messages that the database has never had (written in phase 1, before
        any backfill) are put into it, under the inbox's lock: from phase 2 on, nothing only the file holds
        is left out of the database's inbox.  A message the database has (claimed or not) is left as it is.
        False when the file could not be read (nothing was checked)."""
        path = self.document_path()
        if path is None:
            return False
        try:
            listed = _read_doc(path, list, [], self.tree.root)
        except Exception:  # noqa: BLE001 - unreadable: the adopter's own read says so; nothing is inserted
            return False
        unread = [m for m in listed if isinstance(m, dict) and isinstance(m.get("id"), str) and not _is_read(m)]
        if not unread:
            return True
        store = self.store()
        if {m["id"] for m in unread} <= {m["id"] for m in store.load_inbox(self.owner)}:
            return True
        from ..stores import sqltext as _sql

        sql = _sql.insert(MESSAGES, "DO NOTHING")
        rows = [MESSAGES.row_of(MESSAGES.record(m, fallback={"recipient": self.owner})) for m in unread]
        store.db.write(lambda tx: tx.executemany(sql, rows))
        return True

    def checked_list(self) -> Any:
        """This thread's look at a list-file inbox, with its unread messages put into the database unless
        this process has seen them all there at this very look (nobody wrote the file since)."""
        look = self.look()
        key = (self.tree, self.owner)
        if look is None or not look.known or self.a.backfilled.get(key) != look:
            self.a.note_backfilled(key, look if self.backfill_list() else None)
        return look

    def load(self) -> Any:
        into = self.decl.into
        if self.phase is Phase.FILES_ONLY:
            look = self.look()  # before the adopter's read: a write after it makes the save's look differ
            returned, doc = self.files_value()
            self.a.remember_load(self.base_key, doc, look)
            return returned
        listed = self.decl.shape == "list"
        if self.phase is Phase.FILES_THEN_DB:
            look = self.checked_list() if listed else self.look()
            t0 = time.perf_counter()
            returned, doc = self.files_value()
            if self.sampled():
                files = Outcome(FILES, self.view(doc), seconds=time.perf_counter() - t0)
                self.publish(files, Outcome.run(DB, self.db_load, (self.store(),), {}, catch=True), compare=True)
            self.a.remember_load(self.base_key, doc, look)
            return returned
        # phase 3: the database answers; the adopter's function (the files) is the shadow
        if listed:
            self.checked_list()
        store = self.store()
        db = Outcome.run(DB, self.db_load, (store,), {}, catch=False)
        returned = None
        self.sampled_run = self.sampled()
        if self.sampled_run:
            if not listed:
                self.look()  # the files are read: a writer outside the fleet is counted in phase 3 too
            t0 = time.perf_counter()
            try:
                returned, doc = self.files_value()
            except Exception as exc:  # noqa: BLE001 - the shadow side never fails the call
                files = Outcome(FILES, error=exc, seconds=time.perf_counter() - t0)
            else:
                files = Outcome(FILES, self.view(doc), seconds=time.perf_counter() - t0)
            self.publish(db, files, compare=True)
        value = db.value
        self.a.remember(self.base_key, value)
        if into:  # after the shadow read, which set it from the files
            if not self.plan.kind.keyed:
                setattr(self.a.module, into, _copy(value))
                return getattr(self.a.module, into)
            cache = self.global_value(into)
            if value is None:  # no record in the database: the cache holds what the adopter's load makes of it
                if not self.sampled_run:
                    with contextlib.suppress(Exception):
                        returned = self.call_theirs(retry_torn=True)
                return returned
            cache[self.owner] = _copy(value)
            return cache[self.owner]
        return value

    # -- Claim -------------------------------------------------------------------------------
    def claim(self) -> Any:
        agent = self.owner
        inbox = self.tree.inbox(agent)
        if self.phase is Phase.FILES_ONLY:
            return self.call_theirs()
        store = self.store()
        if self.phase is Phase.FILES_THEN_DB:
            before = _json_names(inbox, self.tree.root)
            t0 = time.perf_counter()
            returned = self.call_theirs()
            files = Outcome(FILES, _legacy_view("inbox", agent, returned), seconds=time.perf_counter() - t0)
            claimed = sorted(_layout.stem(name) for name in before - _json_names(inbox, self.tree.root))
            db = Outcome.run(DB, store.claim_inbox, (agent,), {"ids": claimed}, catch=True)
            self.publish(files, db, compare=True)
            return returned
        # phase 3: the database claims; the adopter's function then clears the same messages from the files
        before = _Snapshot.of_folder(inbox, self.tree.root)
        db = Outcome.run(DB, store.claim_inbox, (agent,), {}, catch=False)
        claimed = {m["id"] for m in db.value}
        files = Outcome.run(FILES, self.call_theirs, (), {}, catch=True)
        # what the database did not claim stays unread in the files; what it claimed is gone from them
        before.restore(only=[n for n in before.files if _layout.stem(n) not in claimed])
        for mid in claimed:
            with contextlib.suppress(Exception):
                _files.remove(inbox / _layout.document_name(mid), root=self.tree.root)
        if files.error is None:
            files.value = _legacy_view("inbox", agent, files.value)
        self.publish(db, files, compare=True)
        return db.value
