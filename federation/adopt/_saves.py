"""The saves of one call of a declared function (a mixin of :class:`~federation.adopt._call._Call`): a whole
document, a keyed source, a list, a written record, polls or messages, each side in its phase's order."""

from __future__ import annotations

import contextlib
from typing import Any, Callable

from shim import DB, FILES, Outcome, Phase, delta, patch

from ..domain import clock as _clock, layout as _layout
from ..stores import files as _files
from ..domain.entities import MESSAGES
from ._declare import AdoptedWriteError
from ._snapshot import _Snapshot, _document_path, _files_to_db, _json_names, _parse_or_none, _read_doc
from ._values import _ABSENT, _by_id, _copy, _freeze, _is_read, _thaw


class _Saves:
    """The save paths of :class:`~federation.adopt._call._Call` (its state and helpers are the class's)."""

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
