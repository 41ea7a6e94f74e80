"""One call of a declared function, under its document's lock: the phase's order of the sides, deltas, comparison."""

from __future__ import annotations

import contextlib
import os
import random
import time
from typing import Any, Callable

from shim import DB, FILES, Observation, Outcome, Phase, delta, patch

from ..domain import clock as _clock, layout as _layout
from ..stores import files as _files
from .._wiring import candidate
from ..domain.entities import MESSAGES
from ._declare import AdoptedWriteError, Claim, LIST_INBOX, Load
from ._plan import _Plan
from ._snapshot import _Snapshot, _document_path, _files_to_db, _json_names, _parse_or_none, _read_doc
from ._values import _ABSENT, _by_id, _copy, _db_load, _freeze, _is_read, _legacy_view, _thaw, _unread


# ---------------------------------------------------------------------------
# one call

class _Call:
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

    # -- Save of a module global: a delta against what this thread loaded ----------------
    def save_document(self) -> Any:
        entity, source = self.plan.entity, self.decl.source
        mine = self.global_value(source)
        frozen_mine, frozen_base = _freeze(mine), self.a.frozen(entity)
        if frozen_mine == frozen_base:
            return None  # unchanged since the load (the same bytes): nothing to write
        look = self.look()
        unchanged = self.unchanged(look)
        if unchanged and self.phase is Phase.FILES_ONLY:
            # phase 1, and nobody wrote the file since this thread loaded it (the fleet's stamp and the file's
            # identity are what it saw then): the merge is the caller's document, written as it is
            returned = self.wrapped(*self.args, **self.kwargs)
            self.a.remember(entity, mine, frozen=frozen_mine, look=self.stamp(look))
            return returned
        changes = delta({} if frozen_base is _ABSENT else _thaw(frozen_base), mine)
        if not changes:
            return None
        returned = None
        written: dict[str, Any] = {}

        def files_side() -> Any:
            if unchanged:  # the file is this thread's base: the merge is the caller's document, as it is
                try:
                    value = self.wrapped(*self.args, **self.kwargs)
                except BaseException:
                    self.stamp()
                    raise
                written["look"] = self.stamp(look)  # the file is the caller's document
                return value
            current = _read_doc(self.tree.polls_file, dict, {}, self.tree.root)
            patch(current, changes, in_place=True)  # just read: no one else holds it
            setattr(self.a.module, source, current)  # what the adopter's function writes: theirs, merged
            try:
                return self.wrapped(*self.args, **self.kwargs)
            finally:
                setattr(self.a.module, source, mine)
                self.stamp()  # the file is the merge, not the caller's document: no look kept for it

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
        # the caller's document is the base of its next save; the look only when the file is that document
        self.a.remember(entity, mine, frozen=frozen_mine, look=written.get("look"))
        return returned

    # -- Save of a keyed cache entry (``source=`` a dict global keyed by the key) ----------------
    def save_keyed_source(self) -> Any:
        source, kind = self.decl.source, self.plan.kind.document
        cache = self.global_value(source)
        mine = cache.get(self.owner) if isinstance(cache, dict) else None
        if not isinstance(mine, dict):  # nothing cached for this key: what the adopter's function writes
            return self.save_written_record()
        changes = delta(self.a.base(self.base_key, {}) or {}, mine)
        if not changes:
            return None
        path = _document_path(self.tree, kind, self.owner)
        self.look()

        def files_side() -> Any:
            current = _read_doc(path, dict, None, self.tree.root) or {}
            merged = patch(current, changes, in_place=True)
            cache[self.owner] = merged  # what the adopter's function writes: theirs, merged
            try:
                return self.wrapped(*self.args, **self.kwargs)
            finally:
                cache[self.owner] = mine
                self.stamp()

        if self.phase is Phase.FILES_ONLY:
            returned = files_side()
        else:
            sides = {FILES: files_side, DB: lambda: self.db_merge(changes)}
            first = Outcome.run(self.phase.authority, sides[self.phase.authority], (), {}, catch=False)
            other = Outcome.run(self.phase.shadow, sides[self.phase.shadow], (), {}, catch=True)
            self.publish(first, other)
            returned = first.value if self.phase is Phase.FILES_THEN_DB else other.value
        self.a.remember(self.base_key, mine)
        return returned

    def db_merge(self, changes: list) -> None:
        """The database's record of this call's keyed document, with *changes* applied."""
        from ..transfer.rows import document_rows
        from ..transfer.sync import repair_documents

        store, kind = self.store(), self.plan.kind.document
        current = self.db_load(store)
        merged = patch(_copy(current) if isinstance(current, dict) else {}, changes, in_place=True)
        rows = document_rows(self.tree, kind, self.owner, merged)
        if rows.invalid:
            bad = rows.invalid[0]
            raise AdoptedWriteError(f"{bad['path']}: {bad['reason']}: the database keeps its record")
        store.db.write(lambda tx: repair_documents(tx, rows, {(kind, self.owner)}, _clock.now()))

    # -- Save of a whole list-file inbox (``shape="list"``): a delta by message id ----------------
    def save_list(self) -> Any:
        path = self.document_path()
        if path is None:  # an odd key: the adopter's function says what is wrong
            return self.call_theirs()
        look = self.look()
        unchanged = self.unchanged(look)
        if unchanged and self.phase is Phase.FILES_ONLY:
            # phase 1, and nobody wrote the list since this thread loaded it: what the caller writes is the merge
            mine = self.written_list()
            returned = self.call_theirs()
            after = self.stamp(look)
            if mine is None:
                mine = _read_doc(path, list, [], self.tree.root)
            self.a.remember(self.base_key, mine, look=after)
            return returned
        # the file before the call: put back if the database refuses (phase 3), merged into (unless it is
        # this thread's base: nobody wrote it since this thread loaded or saved it)
        before = _Snapshot.of(path, self.tree.root) if self.phase is Phase.DB_THEN_FILES or not unchanged else None
        before_list = None
        if not unchanged:
            before_list = _parse_or_none(before.files[path.name])
            if not isinstance(before_list, list):
                before_list = [] if before.files[path.name] is None else _read_doc(path, list, [], self.tree.root)
        found: dict[str, Any] = {}

        def theirs() -> Any:
            mine = self.written_list()
            returned = self.call_theirs()
            written = _read_doc(path, list, [], self.tree.root) if mine is None else mine
            base = self.a.base(self.base_key, None)
            current = base if before_list is None else before_list  # the list in the file before the call
            if base is None:  # never loaded here: what the file held is the base
                base = current = current or []
            old, new = _by_id(base), _by_id(written)
            added = [m for i, m in new.items() if i not in old]
            removed = [i for i in old if i not in new]
            changed = {i: m for i, m in new.items() if i in old and m != old[i]}
            merged, seen = [], set()
            for m in current:
                mid = m.get("id") if isinstance(m, dict) else None
                if mid in removed:
                    continue
                merged.append(changed.get(mid, m))
                seen.add(mid)
            merged += [m for m in added + list(changed.values()) if m["id"] not in seen]
            same = merged == written
            if not same:
                _files.atomic_write_json(path, merged, root=self.tree.root)
            after = self.stamp()
            found.update(added=added, read=[i for i in removed if not _is_read(old[i])] +
                         [i for i, m in changed.items() if _is_read(m) and not _is_read(old[i])],
                         after=after, kept=all(i in seen for i in changed))
            # what the caller holds is the base of its next save; the look only when the file is that list
            self.a.remember(self.base_key, written, look=after if same else None)
            return returned

        def to_db() -> None:
            store = self.store()
            added = [MESSAGES.record(m, fallback={"recipient": self.owner}) for m in found.get("added", ())
                     if not _is_read(m)]
            read = found.get("read", [])

            def apply() -> None:
                for m in added:
                    store.save_message(m)
                if read:
                    store.claim_inbox(self.owner, ids=list(read))

            if added or read:
                store.atomic(apply)
            found["db"] = True

        if self.phase is Phase.FILES_ONLY:
            return theirs()
        key = (self.tree, self.owner)
        checked = look is not None and look.known and self.a.backfilled.get(key) == look
        returned = self.written(before, to_db, run=theirs)
        if checked and found.get("db") and found.get("kept"):
            # the file had nothing unread the database lacked; what this call added is in it, what it read is
            # claimed there: the list as written has nothing to put into the database either
            self.a.note_backfilled(key, found["after"])
        return returned

    def written_list(self) -> list | None:
        """The list the adopter's save writes, when the call shows it (its keyed cache, or its argument)."""
        mine = None
        if self.decl.source is not None:  # a keyed cache of lists: what it holds is what is written
            cache = self.global_value(self.decl.source)
            mine = cache.get(self.owner) if isinstance(cache, dict) else None
        if mine is None and self.plan.written_param is not None:  # what it writes: its argument, as it is
            with contextlib.suppress(KeyError, IndexError, TypeError):
                mine = self.plan.argument(self.plan.written_param, self.args, self.kwargs)
        return mine if isinstance(mine, list) else None

    # -- Save of what the function wrote ---------------------------------------------------
    def written(self, before: _Snapshot, to_db: Callable[[], None], run: Callable[[], Any] | None = None) -> Any:
        """Run the adopter's function and put what it wrote into the database, in the phase's order."""
        run = run or self.call_theirs
        if self.phase is Phase.FILES_ONLY:
            return run()
        if self.phase is Phase.FILES_THEN_DB:
            files = Outcome.run(FILES, run, (), {}, catch=False)
            self.publish(files, Outcome.run(DB, to_db, (), {}, catch=True))
            return files.value
        # phase 3: the record exists only once their function wrote it, so the database decides after it:
        # if the database refuses, the files are put back as they were and the call fails
        try:
            files = Outcome.run(FILES, run, (), {}, catch=False)
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
        """A keyed document the function wrote whole: merged as a delta against what this thread loaded
        (into the file as it was under the lock, and the database's record), so a concurrent save of
        another field or role is kept."""
        kind = self.plan.kind.document
        path = _document_path(self.tree, kind, self.owner)
        self.look()
        before = _Snapshot.of(path, self.tree.root)
        merge: dict[str, Any] = {}

        def theirs() -> Any:
            returned = self.call_theirs()
            self.stamp()
            base = self.a.base(self.base_key, None)  # after the call: a load inside it counts
            if isinstance(base, dict):
                raw = before.files[path.name]
                current = _parse_or_none(raw)
                written = _read_doc(path, dict, None, self.tree.root)
                if isinstance(written, dict):
                    changes = delta(base, written)
                    merge["changes"] = changes
                    if isinstance(current, dict):
                        merged = patch(current, changes, in_place=True)
                        if merged != written:
                            _files.atomic_write_json(path, merged, root=self.tree.root)  # stamped by the gate
                        written = merged
                    self.a.remember(self.base_key, written)
            return returned

        def to_db() -> None:
            if self.phase is Phase.DB_THEN_FILES and "changes" in merge:
                self.db_merge(merge["changes"])  # the database's record, with what this caller changed
            else:
                _files_to_db(self.store(), self.tree, [path], {(kind, self.owner)})

        if self.phase is Phase.FILES_ONLY:
            return theirs()
        return self.written(before, to_db, run=theirs)

    def save_written_polls(self) -> Any:
        self.look()
        if self.phase is Phase.FILES_ONLY:
            returned = self.call_theirs()
            self.stamp()
            return returned
        path = self.tree.polls_file
        before = _Snapshot.of(path, self.tree.root)
        old = _files.read_json(path, dict, {}, root=self.tree.root)

        def to_db() -> None:
            self.stamp()
            changes = delta(old, _files.read_json(path, dict, {}, root=self.tree.root))
            if changes:
                store = self.store()
                store.atomic(lambda: store.save_polls(patch(store.load_polls(), changes, in_place=True)))

        return self.written(before, to_db)

    def save_written_messages(self) -> Any:
        if self.phase is Phase.FILES_ONLY:
            return self.call_theirs()
        inbox = self.tree.inbox(self.owner)
        before = _Snapshot.of_folder(inbox, self.tree.root)

        def to_db() -> None:
            new = sorted(_json_names(inbox, self.tree.root) - set(before.files))
            messages = []
            for name in new:
                data = _files.read_json(inbox / name, root=self.tree.root)
                if data is None:
                    continue
                messages.append(MESSAGES.record(data, fallback={"id": _layout.stem(name), "recipient": self.owner}))
            store = self.store()
            store.atomic(lambda: [store.save_message(m) for m in messages])

        return self.written(before, to_db)

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
