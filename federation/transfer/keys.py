"""Idempotency keys across every move (issue 29): the same (sender, key) names its first send in every
phase, after ``migrate``, after ``sync`` in either direction and after every ``rollout set`` step.

A key lives on each side as that side keeps it: ``nodes/{sender}/sent_keys/{sha256(key)}.json`` in the
legacy tree (docs/delivery.md), the ``idempotency_key`` of its messages' rows in the database -- and,
for a key whose messages the database has no row of (read in phase 1, before the migration), a row of
the bookkeeping table ``idempotency_keys``.  ``migrate`` and ``sync --to db`` carry the files' keys in;
``sync --to files`` writes the database's keys out.  Keys are only ever added by a move, never removed
or changed: a key that names a send is what keeps a retried send from delivering twice.

Every key file is untrusted input: one whose name is not the hash of its key, whose sender is not its
folder's agent, whose ids or recipients are not well formed, or that names a message of another sender,
is skipped and listed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

from .._logging import library_logger
from ..domain import validate as _validate
from ..domain.delivery import key_file_problem
from ..domain.entities import MESSAGES, keys_lock
from ..domain.layout import Tree, document_name, is_document_name, stem
from ..errors import FederationError
from ..stores.files import atomic_write_json, list_dir, locked, read_json

__all__ = ["Key", "KeyFiles", "read_key_files", "import_keys", "export_keys"]

log = library_logger("federation.keys")


@dataclasses.dataclass(frozen=True)
class Key:
    sender: str
    key: str
    ids: tuple[str, ...]
    recipients: tuple[str, ...]
    created_at: str
    #: the key file it was read from ("" for a key of the database)
    path: str = ""

    def document(self) -> dict[str, Any]:
        """The key file's content, as ``core.save_keyed_messages`` writes it."""
        return {"sender": self.sender, "key": self.key, "ids": list(self.ids), "recipients": list(self.recipients),
                "created_at": self.created_at}


@dataclasses.dataclass
class KeyFiles:
    keys: list[Key] = dataclasses.field(default_factory=list)
    #: key files skipped: ``{"path", "reason"}``
    invalid: list[dict[str, str]] = dataclasses.field(default_factory=list)


def key_name(key: str) -> str:
    """The file name of *key* in its sender's ``sent_keys/`` (the key is text: hashed, never a path)."""
    return document_name(hashlib.sha256(key.encode("utf-8")).hexdigest())


def _parse(data: Any, sender: str, name: str, rows: dict | None) -> Key:
    """The key of a key file, or ValueError saying why it cannot stand for *sender*'s send
    (:func:`domain.delivery.key_file_problem`; its name must be its key's hash; a message it names that the
    tree holds (*rows*: the messages read from the tree) must be the sender's, to that recipient)."""
    key = data.get("key") if isinstance(data, dict) else None
    problem = key_file_problem(data, sender, key) if isinstance(key, str) else "it names no key"
    if problem is None and key_name(key) != name:
        problem = "it is not named after its key"
    for message_id, recipient in zip(data["ids"], data["recipients"]) if problem is None and rows else ():
        row = rows.get((message_id,))
        if row is not None and (row[_SENDER], row[_RECIPIENT]) != (sender, recipient):
            problem = (f"it names message {message_id!r}, which is {row[_SENDER]!r}'s to {row[_RECIPIENT]!r}, "
                       f"not {sender!r}'s to {recipient!r}")
            break
    if problem:
        raise ValueError(problem)
    created = data.get("created_at")
    return Key(sender, key, tuple(data["ids"]), tuple(data["recipients"]), created if isinstance(created, str) else "")


_SENDER, _RECIPIENT = MESSAGES.columns.index("sender"), MESSAGES.columns.index("recipient")


def read_key_files(tree: Tree, scanned: Any = None) -> KeyFiles:
    """Every key file under ``nodes/*/sent_keys/`` (reached without following links) that can stand for its
    sender's send; the others in ``invalid``.  *scanned*: the tree's rows (:class:`rows.TreeRows`), to check
    the messages a key names that are still on the disk."""
    rows = scanned.rows["messages"] if scanned is not None else None
    out = KeyFiles()
    try:
        senders = list_dir(tree.nodes, root=tree.root)
    except (FederationError, NotADirectoryError):  # nodes/ a link or a file: listed by the tree's readers
        senders = []
    for sender in sorted(senders):
        if not _validate.is_agent(sender):
            continue
        folder = tree.sent_keys(sender, listed=True)
        try:
            names = list_dir(folder, root=tree.root)
        except (FederationError, NotADirectoryError) as exc:  # a link or a file where the folder should be
            out.invalid.append({"path": str(folder), "reason": str(getattr(exc, "reason", exc))})
            continue
        for name in sorted(names):
            if not is_document_name(name):
                continue
            path = folder / name
            try:
                data = read_json(path, dict, None, root=tree.root)
                if data is not None:
                    out.keys.append(dataclasses.replace(_parse(data, sender, name, rows), path=str(path)))
            except (FederationError, ValueError) as exc:
                out.invalid.append({"path": str(path), "reason": str(getattr(exc, "reason", exc))})
    for bad in out.invalid:
        log.warning("key_file_skipped", path=bad["path"], reason=bad["reason"])
    return out


def import_keys(store: Any, found: KeyFiles) -> int:
    """Carry the keys of the legacy files into the database (``migrate``, ``sync --to db``): onto their messages'
    rows, and into ``idempotency_keys`` when some of its messages have no row (a key whose messages were read
    before the move is still found).  A key naming a message row of another sender is skipped and listed in
    *found*.  Adds only (a rerun carries nothing); the number of keys carried."""
    if not found.keys:
        return 0

    def fn(tx: Any) -> int:
        carried = 0
        for k in found.keys:
            rows: dict[str, tuple[str, str | None]] = {}  # id: (sender, key) of the rows there are
            for start in range(0, len(k.ids), 500):
                chunk = k.ids[start:start + 500]
                rows.update((i, (s, key)) for i, s, key in tx.fetchall(
                    f"SELECT id, sender, idempotency_key FROM messages WHERE id IN "
                    f"({', '.join('?' for _ in chunk)})", chunk))
            if any(sender != k.sender for sender, _ in rows.values()):
                found.invalid.append({"path": k.path,
                                      "reason": "it names a message of another sender (not carried)"})
                continue
            bare = [i for i, (_, key) in rows.items() if key is None]
            if bare:
                tx.executemany("UPDATE messages SET idempotency_key = ? WHERE id = ? AND sender = ? AND "
                               "idempotency_key IS NULL", [(k.key, i, k.sender) for i in bare])
            kept = len(rows) < len(k.ids) and not tx.fetchone(
                "SELECT 1 FROM idempotency_keys WHERE sender = ? AND idempotency_key = ?", (k.sender, k.key))
            if kept:  # messages without a row (read before the move): the key is kept on its own
                tx.execute("INSERT INTO idempotency_keys (sender, idempotency_key, ids, recipients, created_at) "
                           "VALUES (?, ?, ?, ?, ?) ON CONFLICT (sender, idempotency_key) DO NOTHING",
                           (k.sender, k.key, json.dumps(list(k.ids)), json.dumps(list(k.recipients)),
                            k.created_at))
            carried += bool(bare or kept)
        return carried

    return store.db.write(fn)


def database_keys(store: Any) -> list[Key]:
    """Every key the database knows: on message rows (by sender and key, ids by recipient) and in ``idempotency_keys``."""

    def fn(tx: Any) -> list[Key]:
        grouped: dict[tuple[str, str], list[tuple]] = {}
        for sender, key, recipient, mid, created in tx.fetchall(
                "SELECT sender, idempotency_key, recipient, id, created_at FROM messages "
                "WHERE idempotency_key IS NOT NULL"):
            grouped.setdefault((sender, key), []).append((recipient, mid, created))
        keys = [Key(s, k, tuple(m for _, m, _ in sorted(v)), tuple(r for r, _, _ in sorted(v)),
                    min(c or "" for _, _, c in v)) for (s, k), v in grouped.items()]
        for sender, key, ids, recipients, created in tx.fetchall(
                "SELECT sender, idempotency_key, ids, recipients, created_at FROM idempotency_keys"):
            if (sender, key) not in grouped:
                keys.append(Key(sender, key, tuple(json.loads(ids)), tuple(json.loads(recipients)), created))
        return keys

    return store.db.read(fn)


def export_keys(store: Any, tree: Tree, *, apply: bool = True) -> list[tuple[str, str]]:
    """Write the database's keys that the legacy tree lacks as key files (``sync --to files``), each under its
    sender's key lock; a key file already there is left as it is.  ``[(path, sender:key)]`` written (or, without
    *apply*, that would be)."""
    written = []
    present: dict[str, set[str]] = {}
    for k in sorted(database_keys(store), key=lambda k: (k.sender, k.key)):
        if not _validate.is_agent(k.sender):
            continue
        if k.sender not in present:
            try:
                present[k.sender] = set(list_dir(tree.sent_keys(k.sender), root=tree.root))
            except (FederationError, NotADirectoryError):
                present[k.sender] = None  # a link where the folder should be: nothing written through it
        names = present[k.sender]
        name = key_name(k.key)
        if names is None or name in names:
            continue
        path = tree.sent_keys(k.sender) / name
        if apply:
            with locked(tree, keys_lock(k.sender)):
                if read_json(path, dict, None, root=tree.root) is None:
                    atomic_write_json(path, k.document(), root=tree.root)
        written.append((str(path), f"{k.sender}:{stem(name)[:12]}"))
    return written
