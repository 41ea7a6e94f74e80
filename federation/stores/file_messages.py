"""Messages on the legacy file tree: one file per unread message, ``nodes/{recipient}/inbox/{id}.json``.

The bodies of :mod:`federation.core`'s message functions (``core`` binds them to its tree; the shim wraps
``core``'s names): deliver, read, claim (read and delete under the inbox lock), and the idempotent send
(``nodes/{sender}/sent_keys/``).  A message's id is its file's name and its recipient the inbox's agent:
a body that says otherwise is invalid, never a path (CONTRACT "Untrusted files").  Leases, acks and dead
letters are :mod:`federation.stores.file_delivery`'s.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from ..domain import delivery as _delivery
from ..domain.entities import MESSAGE_FIELDS, MESSAGES, inbox_lock, keys_lock, message_mismatch
from ..domain.layout import document_name, is_document_name
from ..errors import CorruptFileError, FileStorageError, StorageError
from .file_reads import read_or_skip, skip
from .files import Tree, atomic_write_json, locked, names_in, open_folder, parse_document, read_in, read_regular, remove

__all__ = ["message_from_file", "order", "save_message", "save_messages", "load_inbox", "claim_inbox",
           "save_keyed_messages"]


def message_from_file(raw: bytes | None, path: Path, agent: str) -> dict | None:
    """The message of one inbox file's bytes, or None (gone, or invalid: skipped and logged).

    The file's name is the message's id and its folder the recipient: a body
    that says otherwise is invalid, never a path (CONTRACT "Untrusted files").
    """
    if raw is None:
        return None
    try:
        data = parse_document(raw, path)
    except CorruptFileError as exc:
        skip(path, exc.reason)
        return None
    reason = message_mismatch(data, path.stem, agent)
    if reason:
        skip(path, reason)
        return None
    # legacy files may lack "id" (the file name is the id) and "recipient" (the inbox's agent)
    return MESSAGES.record(data, fallback={"id": path.stem, "recipient": agent})


def order(messages: list[dict]) -> list[dict]:
    return sorted(messages, key=lambda m: (str(m.get("timestamp") or ""), str(m["id"])))


def _write(t: Tree, message: dict) -> Path:
    path = t.message_file(message["recipient"], message["id"])
    atomic_write_json(path, {field: message.get(field) for field in MESSAGE_FIELDS}, root=t.root)
    return path


def save_message(t: Tree, message: dict) -> None:
    """Deliver *message* into its recipient's inbox."""
    _write(t, message)


def save_messages(t: Tree, messages: list[dict]) -> None:
    """Deliver several messages (a broadcast).  Legacy: one file per message, each atomic on its own."""
    for message in messages:
        _write(t, message)


def load_inbox(t: Tree, agent: str) -> list[dict]:
    """The unread messages of *agent*, oldest first (nothing is claimed)."""
    inbox = t.inbox(agent)
    out = []
    try:
        with open_folder(inbox, t.root) as fd:  # one walk from the root, then each file in that folder
            for name in names_in(fd) if fd is not None else ():
                if not is_document_name(name):
                    continue
                path = inbox / name
                try:
                    raw = read_in(fd, name, path)
                except CorruptFileError as exc:  # a link, FIFO, folder or oversized file: never opened or followed
                    skip(path, exc.reason)
                    continue
                msg = message_from_file(raw, path, agent)
                if msg is not None:
                    out.append(msg)
    except CorruptFileError as exc:  # the agent's folder or inbox is a link or a file: nothing is read through it
        skip(Path(exc.path), exc.reason)
        return []
    return order(out)


def claim_inbox(t: Tree, agent: str, ids: list[str] | None = None) -> list[dict]:
    """Claim the unread messages of *agent* (all, or only *ids*), oldest first.

    Legacy: the message files are read and deleted, under the inbox lock so
    that two readers never both receive a message.
    """
    with locked(t, inbox_lock(agent)):
        messages = load_inbox(t, agent)
        if ids is not None:
            wanted = set(ids)
            messages = [m for m in messages if m["id"] in wanted]
        inbox = t.inbox(agent)
        for msg in messages:
            # the id is the file's own name (message_from_file refuses a body that disagrees)
            remove(inbox / document_name(msg["id"]), root=t.root)
        return messages


def save_keyed_messages(t: Tree, messages: list[dict], key: str) -> list[str]:
    """Deliver *messages* (one sender) under the sender's idempotency *key*, unless the key was used:
    then nothing is written and the ids of the first send are returned.

    Under the recipients' inbox locks (no receiver takes a message before its key is written) and the
    sender's key lock: the messages, then the key's file (``nodes/{sender}/sent_keys/``).  A write that
    fails (a full disk) removes what this send wrote before it raises: an error leaves nothing another
    agent can see, and a retry with the key is safe.  A crash between the two writes can at worst let
    a retry deliver again (at least once), never lose the message.
    """
    if not messages:
        return []
    sender = messages[0]["sender"]
    with contextlib.ExitStack() as held:
        for name in sorted({inbox_lock(m["recipient"]) for m in messages}):  # the order every sender takes
            held.enter_context(locked(t, name))
        held.enter_context(locked(t, keys_lock(sender)))
        path = t.key_file(sender, key)
        ids = _key_file_ids(t, path, sender, key)
        if ids is not None:
            return ids
        written: list[Path] = []
        try:
            for message in messages:
                written.append(_write(t, message))
            ids = [m["id"] for m in messages]
            atomic_write_json(path, {"sender": sender, "key": key, "ids": ids,
                                     "recipients": [m["recipient"] for m in messages],
                                     "created_at": messages[0]["timestamp"]}, root=t.root)
        except FileStorageError as exc:
            _take_back(t, written, exc)
            raise
        return ids


def _take_back(t: Tree, written: list[Path], cause: FileStorageError) -> None:
    """Remove the message files a failed keyed send wrote (no one could claim them: their inboxes are
    locked); if one cannot be removed, the send may be visible: say so, since a keyed retry is then safe."""
    for target in written:
        try:
            remove(target, root=t.root)
        except FileStorageError as exc:
            raise StorageError(f"{cause}; the send may or may not have been applied (its message "
                               f"{target.name} could not be taken back: {exc.reason}); a retry with the same "
                               f"idempotency key is safe") from cause


def _key_file_ids(t: Tree, path: Path, sender: str, key: str) -> list[str] | None:
    """The ids of the send the key file *path* stands for; None when there is none, or when the file cannot
    stand for *sender*'s send under *key*: unreadable, naming no message, or naming a message that is on
    the disk with another sender or recipient (domain.delivery).  Such a file is skipped and logged (the
    send goes ahead and writes the key's file anew).  A message no longer on the disk (received) cannot be
    checked: its key is trusted, so that a retry after the receipt still sends nothing."""
    data = read_or_skip(t, path)
    if data is None:
        return None
    reason = _delivery.key_file_problem(data, sender, key)
    if reason is None:
        for message_id, recipient in zip(data["ids"], data["recipients"]):
            reason = _foreign_message(t, message_id, recipient, sender)
            if reason:
                break
    if reason:
        skip(path, reason)
        return None
    return list(data["ids"])


def _foreign_message(t: Tree, message_id: str, recipient: str, sender: str) -> str | None:
    """Why the message *message_id* of *recipient*, where it is still on the disk, is not *sender*'s, or None."""
    name = document_name(message_id)
    for folder in (t.inbox(recipient), t.leased(recipient), t.dead(recipient)):
        try:
            raw = read_regular(folder / name, root=t.root)
        except (CorruptFileError, OSError):
            continue  # not a file that can be read: it names nobody's message
        if raw is None:
            continue
        try:
            data = parse_document(raw, folder / name)
        except CorruptFileError:
            continue
        if message_mismatch(data, message_id, recipient) is None and data.get("sender") != sender:
            return (f"it names message {message_id!r}, which {str(data.get('sender'))[:80]!r} sent, "
                    f"not {sender!r}")
    return None
