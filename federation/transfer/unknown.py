"""Unknown: what a read of the legacy tree could not read is never read as empty (CONTRACT "Unknown is
never empty").

A document that could not be read (torn, invalid, a link or FIFO where the layout keeps one) is recorded
as a scope of documents (:class:`Unknown`): the report compares nothing and ``sync`` repairs nothing under
it from the files.  :func:`unknown_scope` maps an unreadable path of the layout to the documents it holds.
"""

from __future__ import annotations

import dataclasses
import os

from ..domain import layout
from ..domain.entities import MESSAGES, TABLES, Entity
from ..domain.layout import FOLDER_DOCUMENTS, FOLDER_OF, LIST_INBOX, MESSAGE_DIRS, NODE_FILES, POLLS_FILE

__all__ = ["Unknown", "unknown_scope", "document_owner"]


def document_owner(entity: Entity, row: tuple) -> str:
    """Whose legacy document holds *row* of *entity*: the recipient of a message, else the first key field
    (agent, poll id, session id).  With the document kind, what :func:`entities.document_lock` takes."""
    return str(row[_RECIPIENT] if entity is MESSAGES else row[0])


_RECIPIENT = MESSAGES.index("recipient")


#: the document kinds kept under nodes/{agent}/, and under shared/
_NODE_KINDS = ("message", *NODE_FILES.values())
_SHARED_KINDS = ("polls", *FOLDER_OF)


@dataclasses.dataclass
class Unknown:
    """The legacy documents a read could not read, as scopes: every document of a kind (``shared/polls.json``
    torn, ``nodes/`` a link), every document of a kind owned by an agent (``nodes/bob`` or its ``inbox/`` a
    link), or one document (``(kind, id)``).  A record under one of them is neither compared nor synced from
    the files: its file side is not "empty", it is unknown."""

    kinds: set[str] = dataclasses.field(default_factory=set)
    owners: set[tuple[str, str]] = dataclasses.field(default_factory=set)
    docs: set[tuple[str, str]] = dataclasses.field(default_factory=set)
    #: what could not be read: ``(path, reason, kind, owner or None, doc id or None)``, once each
    listed: list[tuple[str, str, str, str | None, str | None]] = dataclasses.field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.listed)

    def add(self, path: str, reason: str, kind: str, *, owner: str | None = None, doc_id: str | None = None) -> None:
        entry = (path, reason, kind, owner, doc_id)
        if entry in self.listed:
            return
        self.listed.append(entry)
        if doc_id is not None:
            self.docs.add((kind, doc_id))
        elif owner is not None:
            self.owners.add((kind, owner))
        else:
            self.kinds.add(kind)

    def covers(self, table: Entity, row: tuple) -> bool:
        """Whether *row* of *table* belongs to a document that could not be read."""
        kind = table.document
        if kind in self.kinds or (kind, str(row[0])) in self.docs:
            return True
        return bool(self.owners) and (kind, document_owner(table, row)) in self.owners

    def merge(self, other: "Unknown") -> None:
        for entry in other.listed:
            self.add(entry[0], entry[1], entry[2], owner=entry[3], doc_id=entry[4])

    def drop(self, path: str) -> None:
        """Forget what was unknown because of *path* (read again, and readable now)."""
        kept = [e for e in self.listed if e[0] != path]
        self.kinds, self.owners, self.docs, self.listed = set(), set(), set(), []
        for entry in kept:
            self.add(entry[0], entry[1], entry[2], owner=entry[3], doc_id=entry[4])

    def only(self, kinds: set[str] | None) -> "Unknown":
        """The part about documents of *kinds* (all with None)."""
        out = Unknown()
        for e in self.listed:
            if kinds is None or e[2] in kinds:
                out.add(e[0], e[1], e[2], owner=e[3], doc_id=e[4])
        return out

    def entries(self) -> list[dict[str, str]]:
        """``[{"path", "reason"}]`` for people and JSON, once per path and reason, by path."""
        return [{"path": p, "reason": r} for p, r in sorted({(e[0], e[1]) for e in self.listed})]

    def tables(self) -> set[str]:
        """The tables with a record that may be under an unknown document."""
        kinds = {e[2] for e in self.listed}
        return {t.name for t in TABLES if t.document in kinds}

    def entities(self) -> list[str]:
        """The ``sync --only`` entities naming these documents (a document's top table: a poll brings its votes)."""
        tables = self.tables()
        return [t.name for t in TABLES if t.parent is None and t.name in tables]


def unknown_scope(root: str, path: str, reason: str, out: Unknown) -> None:
    """Record in *out* which documents the unreadable entry *path* (a file or a folder of the layout, found
    not readable: a link, a FIFO, torn, invalid) holds.  An entry where the layout keeps no document (an
    unknown file that is a FIFO, say) holds none."""
    top = os.path.join(root, "")
    if not path.startswith(top):
        return
    parts = path[len(top):].split(os.sep)
    n, first = len(parts), parts[0]
    if first == layout.NODES_DIR:
        if n == 1:
            for kind in _NODE_KINDS:
                out.add(path, reason, kind)
        elif n == 2:
            for kind in _NODE_KINDS:
                out.add(path, reason, kind, owner=parts[1])
        elif n == 3 and (parts[2] in MESSAGE_DIRS or parts[2] == LIST_INBOX):
            out.add(path, reason, "message", owner=parts[1])
        elif n == 3 and parts[2] in NODE_FILES:
            out.add(path, reason, NODE_FILES[parts[2]], doc_id=parts[1])
        elif n == 4 and parts[2] in MESSAGE_DIRS and layout.is_document_name(parts[3]):
            out.add(path, reason, "message", doc_id=layout.stem(parts[3]))
    elif first == layout.SHARED_DIR:
        if n == 1:
            for kind in _SHARED_KINDS:
                out.add(path, reason, kind)
        elif n == 2 and parts[1] == POLLS_FILE:
            out.add(path, reason, "polls")
        elif n == 2 and parts[1] in FOLDER_DOCUMENTS:
            out.add(path, reason, FOLDER_DOCUMENTS[parts[1]])
        elif n == 3 and parts[1] in FOLDER_DOCUMENTS and layout.is_document_name(parts[2]):
            out.add(path, reason, FOLDER_DOCUMENTS[parts[1]], doc_id=layout.stem(parts[2]))
