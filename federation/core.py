"""The federation's persistence functions: ``load_*`` and ``save_*``.

Their bodies are the legacy JSON file implementation (the on-disk format of
DESIGN.md), written the way the legacy path should have been: atomic writes,
an advisory lock around every read-modify-write, validated agent names.

This module knows nothing about databases or rollout phases.  The transition
shim (:mod:`shim`) is installed on it by one line in ``federation/__init__.py``
and routes each function to the files, the database or both.  This module is the
file store: it implements the ``Store`` protocol (:mod:`federation.stores.protocol`) function
for function, and the SQL store (:class:`federation.stores.sqlstore.SqlStore`) implements
it method for method.  Callers must call through the module
(``core.save_vote(...)``), never ``from federation.core import save_vote``, so
that they always reach the installed wrapper.

``SHIM_SPEC`` describes each function to the shim: whether it reads or writes,
which file lock a dual-write holds across both sides, how a record is keyed
for mismatch events.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import functools
from pathlib import Path
from typing import Any, Callable

from .domain import validate as _validate
from .domain import clock as _clock
from .domain import delivery as _delivery
from . import config
from .stores.files import Tree, entry_kind, list_dir, locked, open_folder, parse_document, read_in, rename_at
from .stores.files import names_in
from .stores import file_tasks as _tasks
from .stores.files import read_regular as _read_regular
from .stores.files import atomic_write_json as _write_any, read_json as _read_any, remove as _remove_any
from .domain.entities import (TABLES, TASKS_LOCK, CONTEXT, DELIVERY_FIELDS, MESSAGE_FIELDS, MESSAGES, POLLS, POLLS_LOCK, PROFILES,
                              SESSIONS, Entity, check_close, check_vote, history_entry, inbox_lock, keys_lock,
                              message_mismatch, node_lock, session_lock, split_votes)
from .domain.layout import AGENT_ENTRIES, document_name, is_document_name, stem
from .errors import ConflictError, CorruptFileError, FileStorageError, NotFoundError, StorageError, ValidationError


def tree() -> Tree:
    """The legacy file tree of the configured root."""
    root = config.settings().root
    cached = _tree_cache.get(root)
    if cached is None:
        cached = _tree_cache[root] = Tree(root)
    return cached


_tree_cache: dict[Path, Tree] = {}


def file_lock(name: str):
    """The advisory lock *name* of the configured root (re-entrant per thread)."""
    return locked(tree(), name)


# Every file of the tree is reached from the root without following a link
# (CONTRACT "Untrusted files"): these bind the _files helpers to the root.
def read_json(path: Path, expect: type = dict, default: Any = None) -> Any:
    return _read_any(path, expect, default, root=tree().root)


def atomic_write_json(path: Path, data: Any) -> None:
    _write_any(path, data, root=tree().root)


def remove(path: Path) -> bool:
    return _remove_any(path, root=tree().root)


_reported: set[tuple[str, str]] = set()


def _read_or_skip(path: Path) -> Any:
    """The JSON of the bookkeeping file *path*; None when it is gone, or unreadable (skipped and logged once)."""
    try:
        return read_json(path)
    except CorruptFileError as exc:
        _skip(path, exc.reason)
        return None


def _skip(path: Path, reason: str) -> None:
    """Log an unreadable legacy file a read skips, once per file and reason (reads repeat every tick)."""
    key = (str(path), reason)
    if key in _reported:
        return
    if len(_reported) > 10000:
        _reported.clear()
    _reported.add(key)
    from ._logging import library_logger

    library_logger("federation.files").warning("legacy_file_invalid", path=str(path), reason=reason,
                                               action="skipped; `federation migrate --dry-run` lists it")


# ---------------------------------------------------------------------------
# messages


def _message_from_file(raw: bytes | None, path: Path, agent: str) -> dict | None:
    """The message of one inbox file's bytes, or None (gone, or invalid: skipped and logged).

    The file's name is the message's id and its folder the recipient: a body
    that says otherwise is invalid, never a path (CONTRACT "Untrusted files").
    """
    if raw is None:
        return None
    try:
        data = parse_document(raw, path)
    except CorruptFileError as exc:
        _skip(path, exc.reason)
        return None
    reason = message_mismatch(data, path.stem, agent)
    if reason:
        _skip(path, reason)
        return None
    # legacy files may lack "id" (the file name is the id) and "recipient" (the inbox's agent)
    return MESSAGES.record(data, fallback={"id": path.stem, "recipient": agent})


def _order(messages: list[dict]) -> list[dict]:
    return sorted(messages, key=lambda m: (str(m.get("timestamp") or ""), str(m["id"])))


def save_message(message: dict) -> None:
    """Deliver *message* into its recipient's inbox."""
    t = tree()
    path = t.message_file(message["recipient"], message["id"])
    atomic_write_json(path, {field: message.get(field) for field in MESSAGE_FIELDS})


def load_inbox(agent: str) -> list[dict]:
    """The unread messages of *agent*, oldest first (nothing is claimed)."""
    return _inbox(agent)


# Functions of this module call each other through these private bodies,
# never through the public names, which the shim may have wrapped.
def _inbox(agent: str) -> list[dict]:
    t = tree()
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
                    _skip(path, exc.reason)
                    continue
                msg = _message_from_file(raw, path, agent)
                if msg is not None:
                    out.append(msg)
    except CorruptFileError as exc:  # the agent's folder or inbox is a link or a file: nothing is read through it
        _skip(Path(exc.path), exc.reason)
        return []
    return _order(out)


def claim_inbox(agent: str, ids: list[str] | None = None, read_at: str | None = None) -> list[dict]:
    """Claim the unread messages of *agent* (all, or only *ids*), oldest first.

    Legacy: the message files are read and deleted, under the inbox lock so
    that two readers never both receive a message.
    """
    t = tree()
    with locked(t, inbox_lock(agent)):
        messages = _inbox(agent)
        if ids is not None:
            wanted = set(ids)
            messages = [m for m in messages if m["id"] in wanted]
        inbox = t.inbox(agent)
        for msg in messages:
            # the id is the file's own name (_message_from_file refuses a body that disagrees)
            remove(inbox / document_name(msg["id"]))
        return messages


# ---------------------------------------------------------------------------
# delivery with leases and acknowledgements (issue 19; the layout: docs/delivery.md)
#
# A received message moves from inbox/ to leased/ by one rename (the claim:
# legacy readers of inbox/ never see it again); its file is left as it was.
# The leases of an agent live in one journal, leased/.leases.json
# ({id: [attempt, lease_until]}), written once per receive or ack, after the
# renames: a leased file the journal does not name (its receive died between
# the two) is an expired lease of attempt 0, taken back by the next receive.
# Everything happens under the inbox lock, which legacy claims take too; the
# journal is on disk, so a lease survives the process that took it.  A lease
# over after max_attempts deliveries moves the file to dead/, rewritten with
# "attempt", "lease_until" and "dead_at".  An ack removes the file, as a legacy
# claim does.  A path is built from a file's name, never from its body.



def _json_names(directory: Path) -> list[str]:
    """The message files' names in *directory*, reached from the root without following a link."""
    try:
        names = list_dir(directory, root=tree().root)
    except CorruptFileError as exc:  # the folder (or one above it) is a link or a file: nothing is read through it
        _skip(directory, exc.reason)
        return []
    return [n for n in names if is_document_name(n)]


def _leases(agent: str, now: str | None = None) -> dict[str, tuple[int, str | None]]:
    """The lease journal of *agent*: ``{id: (attempt, lease_until)}``.  An unreadable journal reads as
    empty: every leased message is then an expired lease (delivered again, never lost).  So does an entry
    out of range (an attempt above the highest ``FEDERATION_MAX_ATTEMPTS``, a lease ending more
    than two days ahead, a time that is not one: domain.delivery), skipped and logged; the next receive drops it."""
    path = tree().leases_file(agent)
    try:
        data = read_json(path, dict, {})
    except CorruptFileError:
        return {}
    now = now or _clock.now()
    out = {}
    for mid, entry in data.items():
        lease, problem = _delivery.journal_entry(entry, now)
        if lease is None:
            _skip(path, f"the lease of {str(mid)[:140]!r}: {problem}")
        else:
            out[mid] = lease
    return out


def _save_leases(agent: str, leases: dict[str, tuple[int, str | None]]) -> None:
    path = tree().leases_file(agent)
    if leases:
        atomic_write_json(path, {mid: list(entry) for mid, entry in sorted(leases.items())})
    else:
        remove(path)


def _message_named(path: Path, agent: str) -> dict | None:
    """The message of a leased or inbox file, its id the file's name; None when it is gone or invalid
    (a link, FIFO or oversized file is never followed or read: skipped and logged, as inbox reads do)."""
    try:
        raw = _read_regular(path, root=tree().root)
    except CorruptFileError as exc:
        _skip(path, exc.reason)
        return None
    except OSError as exc:  # EACCES, EIO...: typed, naming the file
        raise FileStorageError.wrap(exc, path, "read") from exc
    message = _message_from_file(raw, path, agent)
    if message is not None:
        message["id"] = stem(path.name)
    return message


def _dead_record(path: Path, agent: str) -> dict | None:
    """A dead/ file: the message and its delivery fields; None when it is gone or invalid (a link, a body
    naming another id or recipient, a delivery field out of range: skipped and logged, as inbox reads do)."""
    data = _read_or_skip(path)
    if data is None:
        return None
    reason = message_mismatch(data, stem(path.name), agent) or _delivery.delivery_problem(data)
    if reason:
        _skip(path, reason)
        return None
    record = MESSAGES.record(data, fallback={"recipient": agent})
    record["id"] = stem(path.name)
    record["attempt"] = data.get("attempt", 0)
    for field in ("lease_until", "dead_at"):
        record[field] = data.get(field)
    return record


def _public(record: dict, *fields: str) -> dict:
    return {**{f: record.get(f) for f in MESSAGE_FIELDS}, **{f: record.get(f) for f in fields}}


def _bury(agent: str, name: str, message: dict, attempt: int, lease_until: str | None, dead_at: str) -> None:
    """Move a leased message to dead/, its delivery fields written into it."""
    t = tree()
    atomic_write_json(t.dead(agent) / name, {**{f: message.get(f) for f in MESSAGE_FIELDS}, "attempt": attempt,
                                             "lease_until": lease_until, "dead_at": dead_at})
    remove(t.leased(agent) / name)


def lease_inbox(agent: str, lease_until: str, now: str, limit: int | None = None, max_attempts: int = 5,
                ids: list[str] | None = None) -> list[dict]:
    """Lease *agent*'s deliverable messages (all, or only *ids*), oldest first, until *lease_until*.

    Deliverable: new (in inbox/) or leased before with the lease over (*now*
    past it); a lease over after *max_attempts* deliveries moves the message to
    dead/ instead.  Each message comes back with ``attempt`` and ``lease_until``.
    """
    t = tree()
    with locked(t, inbox_lock(agent)):
        inbox, leased = t.inbox(agent), t.leased(agent)
        leases = _leases(agent, now)
        held = _json_names(leased)
        changed = set(leases) - {stem(n) for n in held}  # entries whose file is gone: dropped below
        for mid in changed:
            del leases[mid]
        candidates: list[tuple[dict, int, bool]] = []  # (message, attempts so far, still in inbox/)
        for name in held:
            mid = stem(name)
            attempt, until = leases.get(mid, (0, None))
            if until is not None and until >= now:
                continue  # under lease
            message = _message_named(leased / name, agent)
            if message is None:
                continue
            if attempt >= max_attempts:  # delivered max times, never acknowledged
                _bury(agent, name, message, attempt, until, now)
                leases.pop(mid, None)
                changed.add(mid)
                continue
            candidates.append((message, attempt, False))
        taken = set(held)
        for name in _json_names(inbox):
            if name in taken:
                continue  # a copy already delivered: the inbox file is a leftover, not a new message
            message = _message_named(inbox / name, agent)
            if message is not None:
                candidates.append((message, 0, True))
        candidates.sort(key=lambda c: (str(c[0].get("timestamp") or ""), str(c[0]["id"])))
        if ids is not None:
            wanted = set(ids)
            candidates = [c for c in candidates if c[0]["id"] in wanted]
        elif limit is not None:
            candidates = candidates[:limit]
        out = []
        with contextlib.ExitStack() as folders:
            src = dst = None
            if any(new for _, _, new in candidates):
                # the claim is a rename between two folder descriptors reached from the root without
                # following a link (the gate): a folder swapped for a link meanwhile redirects nothing
                try:
                    src = folders.enter_context(open_folder(inbox, t.root))
                except CorruptFileError as exc:  # inbox/ became a link since the listing: nothing claimed
                    _skip(Path(exc.path), exc.reason)
                dst = folders.enter_context(open_folder(leased, t.root, create=True))  # a linked leased/: typed
            for message, attempt, new in candidates:
                name = document_name(message["id"])
                if new:
                    try:
                        if src is None or not rename_at(src, dst, name, inbox / name):  # the claim
                            continue  # gone since the listing (a reader that ignores the lock)
                    except CorruptFileError as exc:  # swapped for a link or a FIFO since it was read
                        _skip(inbox / name, exc.reason)
                        continue
                leases[message["id"]] = (attempt + 1, lease_until)
                changed.add(message["id"])
                out.append({**message, "attempt": attempt + 1, "lease_until": lease_until})
        if changed:
            _save_leases(agent, leases)
        return out


def ack_messages(agent: str, ids: list[str], read_at: str) -> list[dict]:
    """Acknowledge *agent*'s delivered messages among *ids* (leased or dead): their files are removed,
    as a legacy claim removes a read message; the messages acknowledged now, in the order given."""
    t = tree()
    done = []
    with locked(t, inbox_lock(agent)):
        leases = None
        for message_id in dict.fromkeys(ids):
            name = document_name(_validate.ident(message_id, "message id"))
            for folder in (t.leased(agent), t.dead(agent)):
                message = _message_named(folder / name, agent)
                if message is not None and remove(folder / name):
                    done.append(message)
                    if folder == t.leased(agent):
                        leases = _leases(agent) if leases is None else leases
                        leases.pop(message_id, None)
                    break
        if leases is not None:
            _save_leases(agent, leases)
    return done


def load_dead_letters(agent: str | None, now: str, max_attempts: int = 5) -> list[dict]:
    """Messages delivered *max_attempts* times, never acknowledged (in dead/, or leased with the last lease over)."""
    t = tree()
    out = []
    for name in [agent] if agent is not None else _agents():
        if not _validate.is_agent(name):
            continue
        for file in _json_names(t.dead(name)):
            record = _dead_record(t.dead(name) / file, name)
            if record is not None:
                out.append(record)
        leases = _leases(name, now)
        for file in _json_names(t.leased(name)):
            attempt, until = leases.get(stem(file), (0, None))
            if until is not None and until < now and attempt >= max_attempts:
                message = _message_named(t.leased(name) / file, name)
                if message is not None:
                    out.append({**message, "attempt": attempt, "lease_until": until, "dead_at": until})
    return [_public(r, *DELIVERY_FIELDS) for r in _order(out)]


def save_keyed_messages(messages: list[dict], key: str) -> list[str]:
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
    t = tree()
    with contextlib.ExitStack() as held:
        for name in sorted({inbox_lock(m["recipient"]) for m in messages}):  # the order every sender takes
            held.enter_context(locked(t, name))
        held.enter_context(locked(t, keys_lock(sender)))
        path = t.key_file(sender, key)
        ids = _key_file_ids(path, sender, key)
        if ids is not None:
            return ids
        written: list[Path] = []
        try:
            for message in messages:
                target = t.message_file(message["recipient"], message["id"])
                atomic_write_json(target, {field: message.get(field) for field in MESSAGE_FIELDS})
                written.append(target)
            ids = [m["id"] for m in messages]
            atomic_write_json(path, {"sender": sender, "key": key, "ids": ids,
                                     "recipients": [m["recipient"] for m in messages],
                                     "created_at": messages[0]["timestamp"]})
        except FileStorageError as exc:
            _take_back(written, exc)
            raise
        return ids


def _take_back(written: list[Path], cause: FileStorageError) -> None:
    """Remove the message files a failed keyed send wrote (no one could claim them: their inboxes are
    locked); if one cannot be removed, the send may be visible: say so, since a keyed retry is then safe."""
    for target in written:
        try:
            remove(target)
        except FileStorageError as exc:
            raise StorageError(f"{cause}; the send may or may not have been applied (its message "
                               f"{target.name} could not be taken back: {exc.reason}); a retry with the same "
                               f"idempotency key is safe") from cause


def _key_file_ids(path: Path, sender: str, key: str) -> list[str] | None:
    """The ids of the send the key file *path* stands for; None when there is none, or when the file cannot
    stand for *sender*'s send under *key*: unreadable, naming no message, or naming a message that is on
    the disk with another sender or recipient (domain.delivery).  Such a file is skipped and logged (the
    send goes ahead and writes the key's file anew).  A message no longer on the disk (received) cannot be
    checked: its key is trusted, so that a retry after the receipt still sends nothing."""
    data = _read_or_skip(path)
    if data is None:
        return None
    reason = _delivery.key_file_problem(data, sender, key)
    if reason is None:
        for message_id, recipient in zip(data["ids"], data["recipients"]):
            reason = _foreign_message(message_id, recipient, sender)
            if reason:
                break
    if reason:
        _skip(path, reason)
        return None
    return list(data["ids"])


def _foreign_message(message_id: str, recipient: str, sender: str) -> str | None:
    """Why the message *message_id* of *recipient*, where it is still on the disk, is not *sender*'s, or None."""
    name = document_name(message_id)
    t = tree()
    for folder in (t.inbox(recipient), t.leased(recipient), t.dead(recipient)):
        try:
            raw = _read_regular(folder / name, root=t.root)
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


# Phase 1 keeps the message history in memory, as the legacy server did (lost
# on restart); the SQL store persists it in the same transaction as the message.
# One list per federation root: two federations in one process (tests, a tool
# that serves two roots) never see each other's history, and none needs a reset.
# Bounded (issue 30): the newest IN_MEMORY_LIMIT entries of each, per root, so that a phase-1 process
# that runs for months holds a constant amount of memory (the legacy server kept them all, ~2 KB each).
IN_MEMORY_LIMIT = 10_000
_history: dict[Path, collections.deque] = {}
_sent: dict[Path, collections.deque] = {}  # the messages this process sent, whole (for load_sent)


def _in_memory(book: dict[Path, collections.deque]) -> collections.deque:
    """The configured root's entries in *book* (``_history`` or ``_sent``), the newest :data:`IN_MEMORY_LIMIT`;
    setdefault is atomic in CPython, and so is a bounded deque's extend."""
    root = tree().root
    found = book.get(root)
    return found if found is not None else book.setdefault(root, collections.deque(maxlen=IN_MEMORY_LIMIT))


def save_history(direction: str, messages: list[dict]) -> None:
    """Record *messages* as sent or received in the message history (in memory: lost on restart)."""
    _in_memory(_history).extend(history_entry(direction, m) for m in messages)
    if direction == "sent":
        _in_memory(_sent).extend({field: m.get(field) for field in MESSAGE_FIELDS} for m in messages)


def load_history(agent: str | None = None, limit: int = 100, before: tuple[str, str] | None = None) -> list[dict]:
    """The last *limit* history entries (of *agent*, if given), oldest first.

    *before*: ``(direction, message_id)`` of an entry: only entries older than it.
    """
    kept = list(_history.get(tree().root, ()))  # one C-level copy: another thread may append meanwhile
    rows = [e for e in kept if agent is None or agent in (e.get("sender"), e.get("recipient"))]
    if before is not None:
        direction, message_id = before
        cut = next((i for i, e in enumerate(rows)
                    if e["direction"] == direction and e["message_id"] == message_id), None)
        if cut is None:
            raise ValidationError(f"before {direction}:{message_id} is not an entry of this history")
        rows = rows[:cut]
    return [dict(e) for e in rows[-limit:]] if limit > 0 else []


# ---------------------------------------------------------------------------
# context, expertise, profiles


def load_context(agent: str) -> dict | None:
    return _context(agent)


def _context(agent: str) -> dict | None:
    return _node_record(CONTEXT, agent)


def _node_record(entity: Entity, agent: str) -> dict | None:
    """*agent*'s record of the node document *entity* (context or profile), or None when it has none."""
    data = read_json(tree().node_file(entity.document, agent))
    if data is None:
        return None
    return entity.record(data, given={"agent": agent})


def _update_node(entity: Entity, agent: str, change: Callable[[dict], Any]) -> None:
    """Change *agent*'s node document *entity* under the node lock (a missing one starts from the defaults)."""
    t = tree()
    with locked(t, node_lock(agent)):
        doc = _node_record(entity, agent) or entity.record({}, given={"agent": agent})
        change(doc)
        atomic_write_json(t.node_file(entity.document, agent), doc)


def save_context(agent: str, text: str, updated_at: str) -> None:
    """Set the context text of *agent* (its heartbeat is kept)."""
    _update_node(CONTEXT, agent, lambda doc: doc.update(text=text, updated_at=updated_at))


def save_heartbeat(agent: str, timestamp: str) -> None:
    """Record that *agent* is alive (its context text is kept)."""
    _update_node(CONTEXT, agent, lambda doc: doc.update(last_heartbeat=timestamp))


def load_expertise(agent: str) -> dict | None:
    return _expertise(agent)


def _expertise(agent: str) -> dict | None:
    data = read_json(tree().expertise_file(agent))
    if data is None:
        return None
    domains = data.get("domains") or []
    if not domains:
        return None
    return {"agent": agent, "domains": sorted(domains), "updated_at": data.get("updated_at")}


def save_expertise(agent: str, domains: list[str], updated_at: str) -> None:
    """Replace the expertise domains of *agent*; an empty list removes them."""
    t = tree()
    path = t.expertise_file(agent)
    if not domains:
        remove(path)
        return
    atomic_write_json(path, {"agent": agent, "domains": sorted(domains), "updated_at": updated_at})


def load_profile(agent: str) -> dict | None:
    return _profile(agent)


def _profile(agent: str) -> dict | None:
    return _node_record(PROFILES, agent)


def save_profile(agent: str, default_role: str | None, traits: dict | None, updated_at: str) -> None:
    """Set the profile of *agent*; a ``None`` field keeps its current value."""

    def change(doc: dict) -> None:
        if default_role is not None:
            doc["default_role"] = default_role
        if traits is not None:
            doc["traits"] = traits
        doc["updated_at"] = updated_at

    _update_node(PROFILES, agent, change)


def load_agents() -> list[str]:
    """Every agent with context, expertise, a profile or an inbox."""
    return _agents()


def _listed(directory: Path) -> list[str]:
    """The names in *directory*, reached from the root without following a link; none (logged) when it, or a
    folder above it, is a link or a file: nothing is read through it."""
    try:
        return list_dir(directory, root=tree().root)
    except CorruptFileError as exc:
        _skip(Path(exc.path), exc.reason)
        return []


def _agents() -> list[str]:
    t = tree()
    nodes = t.nodes
    out = []
    for name in _listed(nodes):
        try:  # a link is not an agent's folder: nothing is read through it
            entries = list_dir(nodes / name, root=t.root)
        except CorruptFileError:
            continue
        if not AGENT_ENTRIES.isdisjoint(entries):
            out.append(name)
    return sorted(out)



def load_experts(domain: str) -> list[str]:
    """Agents that list *domain* among their expertise."""
    out = []
    for agent in _agents():
        doc = _expertise(agent)
        if doc and domain in doc["domains"]:
            out.append(agent)
    return out


# ---------------------------------------------------------------------------
# polls


def _read_polls() -> dict[str, dict]:
    return read_json(tree().polls_file, dict, {})


def _normal_poll(poll_id: str, poll: dict) -> dict:
    if not isinstance(poll, dict):
        raise CorruptFileError(tree().polls_file, f"poll {poll_id!r} is not an object")
    record = POLLS.record(poll, fallback={"id": poll_id})
    return {**record, "votes": _valid_votes(poll_id, record["options"], poll.get("votes"))}


def _valid_votes(poll_id: str, options: Any, votes: Any) -> dict[str, str]:
    """The votes of a legacy poll that name one of its options; the others are skipped (logged once)."""
    if not votes:
        return {}
    if not isinstance(votes, dict):
        _skip(tree().polls_file, f"poll {poll_id!r}: its votes are not an object")
        return {}
    kept, refused = split_votes(options, votes)
    for voter, problem in refused:
        _skip(tree().polls_file, f"poll {poll_id!r}: the vote of {voter!r} is not counted: {problem}")
    return kept


def load_polls() -> dict[str, dict]:
    """Every poll, keyed by id (``shared/polls.json``)."""
    return {pid: _normal_poll(pid, p) for pid, p in _read_polls().items()}


def save_polls(polls: dict[str, dict]) -> None:
    """Write the whole polls document (legacy).  Through the shim, a delta."""
    t = tree()
    with locked(t, POLLS_LOCK):
        atomic_write_json(t.polls_file, copy.deepcopy(polls))


def load_poll(poll_id: str) -> dict | None:
    raw = _read_polls().get(poll_id)
    return None if raw is None else _normal_poll(poll_id, raw)


def save_poll(poll: dict) -> None:
    """Create a poll; a poll with the same id is a conflict."""
    t = tree()
    with locked(t, POLLS_LOCK):
        polls = _read_polls()
        if poll["id"] in polls:
            raise ConflictError(f"poll {poll['id']} already exists")
        polls[poll["id"]] = copy.deepcopy(poll)
        atomic_write_json(t.polls_file, polls)


def save_vote(poll_id: str, voter: str, option: str, voted_at: str) -> None:
    """Record *voter*'s vote (replacing an earlier one) on an open poll."""
    t = tree()
    with locked(t, POLLS_LOCK):
        polls = _read_polls()
        poll = polls.get(poll_id)
        check_vote(poll, poll_id, option)
        poll.setdefault("votes", {})[voter] = option
        atomic_write_json(t.polls_file, polls)


def save_poll_status(poll_id: str, agent: str, status: str) -> None:
    """Close a poll (only its creator may); closing a closed poll changes nothing."""
    t = tree()
    with locked(t, POLLS_LOCK):
        polls = _read_polls()
        poll = polls.get(poll_id)
        if check_close(poll, poll_id, agent):
            poll["status"] = status
            atomic_write_json(t.polls_file, polls)


# ---------------------------------------------------------------------------
# sessions


def _normal_session(session_id: str, data: dict) -> dict:
    session = SESSIONS.record(data, fallback={"id": session_id})
    # the nested records, keyed as in the file (a copy two levels deep: reviews nest by type, then reviewer)
    for entity in _SESSION_PARTS:
        session[entity.container] = {k: dict(v) if entity.key > 2 else v
                                     for k, v in (data.get(entity.container) or {}).items()}
    return session


_SESSION_PARTS = tuple(e for e in TABLES if e.parent == SESSIONS.table)


def load_session(session_id: str) -> dict | None:
    data = read_json(tree().session_file(session_id))
    return None if data is None else _normal_session(session_id, data)


def load_sessions() -> dict[str, dict]:
    """Every session, keyed by id."""
    return _sessions()


def _sessions() -> dict[str, dict]:
    directory = tree().sessions_dir
    out = {}
    for name in sorted(_listed(directory)):
        if is_document_name(name):
            sid = stem(name)
            data = read_json(directory / name)
            if data is not None:
                out[sid] = _normal_session(sid, data)
    return out


def save_session(session: dict) -> None:
    """Create a session; one with the same id is a conflict."""
    t = tree()
    sid = session["id"]
    with locked(t, session_lock(sid)):
        if entry_kind(t.session_file(sid), root=t.root) is not None:
            raise ConflictError(f"session {sid} already exists")
        atomic_write_json(t.session_file(sid), copy.deepcopy(session))


def _update_session(session_id: str, change, updated_at: str) -> None:
    t = tree()
    with locked(t, session_lock(session_id)):
        path = t.session_file(session_id)
        data = read_json(path)
        if data is None:
            raise NotFoundError(f"session {session_id} does not exist")
        session = _normal_session(session_id, data)
        change(session)
        session["updated_at"] = updated_at
        atomic_write_json(path, session)


def save_role(session_id: str, agent: str, role: str, subtask: str | None, assigned_at: str) -> None:
    def change(s: dict) -> None:
        s["roles"][agent] = {"role": role, "subtask": subtask, "assigned_at": assigned_at}

    _update_session(session_id, change, assigned_at)


def save_artifact(session_id: str, artifact_type: str, path: str, attached_at: str) -> None:
    def change(s: dict) -> None:
        s["artifacts"][artifact_type] = {"path": path, "attached_at": attached_at}

    _update_session(session_id, change, attached_at)


def save_review(
    session_id: str, artifact_type: str, reviewer: str, status: str, comments: str | None, reviewed_at: str
) -> None:
    def change(s: dict) -> None:
        if artifact_type not in s["artifacts"]:
            raise NotFoundError(f"session {session_id} has no artifact of type {artifact_type!r}")
        s["reviews"].setdefault(artifact_type, {})[reviewer] = {
            "status": status,
            "comments": comments,
            "reviewed_at": reviewed_at,
        }

    _update_session(session_id, change, reviewed_at)


def save_session_phase(session_id: str, phase: str, updated_at: str) -> None:
    def change(s: dict) -> None:
        s["phase"] = phase

    _update_session(session_id, change, updated_at)


# ---------------------------------------------------------------------------
# what an agent reads every tick (issue 11): pages, receipts, pulse.  The file
# store has no index: these read the documents and filter, as the legacy code
# did; the SQL store answers them with indexed queries.


def _page(records: list[dict], limit: int | None, after: str | None, what: str) -> list[dict]:
    """*records* (oldest first) after the one whose id is *after*, at most *limit*."""
    if after is not None:
        for i, r in enumerate(records):
            if r["id"] == after:
                records = records[i + 1:]
                break
        else:
            raise ValidationError(f"after {after!r} is not the id of a {what}: page from the start (after=None)")
    return records if limit is None else records[:limit]


def _by_creation(record: dict) -> tuple[str, str]:
    return (str(record.get("created_at") or ""), str(record["id"]))


def load_polls_page(status: str | None = None, limit: int | None = None, after: str | None = None) -> list[dict]:
    """Polls (with *status*, if given) oldest first, after the poll *after*, at most *limit*.

    *after* must name an existing poll (of any status) or it is a ValidationError.
    """
    everything = sorted((_normal_poll(pid, p) for pid, p in _read_polls().items()), key=_by_creation)
    if after is not None and not any(p["id"] == after for p in everything):
        raise ValidationError(f"after {after!r} is not the id of a poll: page from the start (after=None)")
    if after is not None:  # the cursor poll may have changed status since the last page
        cut = next(i for i, p in enumerate(everything) if p["id"] == after)
        everything = everything[cut + 1:]
    chosen = [p for p in everything if status is None or p["status"] == status]
    return chosen if limit is None else chosen[:limit]


def load_sessions_page(limit: int | None = None, after: str | None = None) -> list[dict]:
    """Sessions oldest first, after the session *after*, at most *limit*."""
    return _page(sorted(_sessions().values(), key=_by_creation), limit, after, "session")


def load_open_polls(agent: str, limit: int) -> list[dict]:
    """The oldest *limit* open polls that *agent* has not voted on."""
    polls = sorted((_normal_poll(pid, p) for pid, p in _read_polls().items()), key=_by_creation)
    return [p for p in polls if p["status"] == "open" and agent not in p["votes"]][:limit]


def load_roles(agent: str) -> list[dict]:
    """*agent*'s roles: ``{"session_id","title","role","subtask"}``, sessions oldest first."""
    out = []
    for s in sorted(_sessions().values(), key=_by_creation):
        role = s["roles"].get(agent)
        if isinstance(role, dict):
            out.append({"session_id": s["id"], "title": s["title"], "role": role.get("role"),
                        "subtask": role.get("subtask")})
    return out


def load_agent_states() -> list[dict]:
    """Every known agent's ``{"agent","text","last_heartbeat"}`` by name (None where it has no context)."""
    out = []
    for agent in _agents():
        ctx = _context(agent) if _validate.is_agent(agent) else None
        out.append({"agent": agent, "text": ctx["text"] if ctx else None,
                    "last_heartbeat": ctx["last_heartbeat"] if ctx else None})
    return out


def load_agents_by_role(role: str) -> list[str]:
    """Agents whose profile's ``default_role`` is *role*, by name."""
    out = []
    for agent in _agents():
        profile = _profile(agent) if _validate.is_agent(agent) else None
        if profile and profile["default_role"] == role:
            out.append(agent)
    return out


def save_messages(messages: list[dict]) -> None:
    """Deliver several messages (a broadcast).  Legacy: one file per message, each atomic on its own."""
    t = tree()
    for message in messages:
        atomic_write_json(t.message_file(message["recipient"], message["id"]),
                          {field: message.get(field) for field in MESSAGE_FIELDS})


def load_sent(agent: str, limit: int = 100, before: str | None = None) -> list[dict]:
    """The last *limit* messages *agent* sent (before message *before*), oldest first, with ``read_at``.

    Phase 1 keeps no read receipts: these are the messages this process sent
    (in memory, as the history), each with ``read_at`` None.
    """
    mine = sorted((m for m in list(_sent.get(tree().root, ())) if m["sender"] == agent),
                  key=lambda m: (str(m["timestamp"]), m["id"]))
    if before is not None:
        cut = next((i for i, m in enumerate(mine) if m["id"] == before), None)
        if cut is None:
            raise ValidationError(f"before {before!r} is not the id of a message {agent} sent")
        mine = mine[:cut]
    return [{**m, "read_at": None} for m in mine[-limit:]] if limit > 0 else []


# ---------------------------------------------------------------------------
# the task registry (issue 28): shared/tasks/{id}.json; the bodies are federation.stores.file_tasks'


def save_task(task: dict) -> None:
    """Create a task; one with the same id is a conflict."""
    _tasks.save_task(tree(), task)


def load_task(task_id: str) -> dict | None:
    """The task *task_id* as stored (its last claim kept), or None."""
    return _tasks.load_task(tree(), task_id)


def claim_task(agent: str, lease_until: str, now: str, ids: list[str] | None = None) -> dict | None:
    """Lease to *agent* the oldest task it may take at *now* (or exactly *ids*), until *lease_until*."""
    return _tasks.claim_task(tree(), agent, lease_until, now, ids)


def save_task_result(agent: str, task_id: str, result: Any, now: str) -> dict:
    """Complete the task *agent* holds with *result*."""
    return _tasks.save_task_result(tree(), agent, task_id, result, now)


def save_task_release(agent: str, task_id: str, now: str) -> None:
    """Give back the task *agent* holds: open again."""
    _tasks.save_task_release(tree(), agent, task_id, now)


def load_tasks_page(status: str | None = None, assignee: str | None = None, limit: int | None = None,
                    after: str | None = None, now: str = "") -> list[dict]:
    """Tasks oldest first (with *status* as seen at *now*, of *assignee*), after *after*, at most *limit*."""
    return _tasks.load_tasks_page(tree(), status, assignee, limit, after, now)


# ---------------------------------------------------------------------------
# what the shim needs to know about each function (see shim.Spec)


def _agent_lock(lock):
    return lambda agent, *a, **k: lock(agent)


def _session_lock(session_id, *a, **k):
    return session_lock(session_id)


def _polls_lock(*a, **k):
    return POLLS_LOCK


def _tasks_lock(*a, **k):
    return TASKS_LOCK


def _first_arg(value, *a, **k):
    return str(value)


SHIM_SPEC: dict[str, dict[str, Any]] = {
    # messages
    "save_message": dict(entity="messages", lock=lambda m, *a, **k: inbox_lock(m["recipient"]),
                         key=lambda m, *a, **k: m["id"]),
    "load_inbox": dict(entity="messages", lock=_agent_lock(inbox_lock), records="id"),
    "claim_inbox": dict(entity="messages", lock=_agent_lock(inbox_lock), records="id",
                        mirror=lambda result, args, kwargs: (
                            args[:1], {**kwargs, "ids": [m["id"] for m in result]})),
    # delivery (issue 19): the other side leases exactly what the authoritative side leased
    "lease_inbox": dict(entity="messages", lock=_agent_lock(inbox_lock), records="id",
                        mirror=lambda result, args, kwargs: (
                            args[:1], {**dict(zip(("lease_until", "now", "limit", "max_attempts"), args[1:5])),
                                       **kwargs, "ids": [m["id"] for m in result], "limit": None})),
    "ack_messages": dict(entity="messages", lock=_agent_lock(inbox_lock), records="id"),
    "load_dead_letters": dict(entity="messages", records="id"),
    # an idempotent send: the other side writes only what the authoritative side wrote (nothing when the key
    # was used); the recipients' inbox locks, as a broadcast (the file side takes the sender's key lock
    # inside them; the database side locks the key in its transaction)
    "save_keyed_messages": dict(
        entity="messages",
        lock=lambda ms, *a, **k: sorted({inbox_lock(m["recipient"]) for m in ms}),
        key=lambda ms, key=None, *a, **k: f"{ms[0]['sender'] if ms else ''}:{key}",
        mirror=lambda result, args, kwargs: (
            ([m for m in args[0] if m["id"] in set(result)], *args[1:]), kwargs)),
    "save_history": dict(entity="message_history", files=False),
    "load_history": dict(entity="message_history", files=False),
    # context, expertise, profiles
    "load_context": dict(entity="context", lock=_agent_lock(node_lock), key=_first_arg),
    "save_context": dict(entity="context", lock=_agent_lock(node_lock), key=_first_arg),
    "save_heartbeat": dict(entity="context", lock=_agent_lock(node_lock), key=_first_arg),
    "load_expertise": dict(entity="expertise", lock=_agent_lock(node_lock), key=_first_arg),
    "save_expertise": dict(entity="expertise", lock=_agent_lock(node_lock), key=_first_arg),
    "load_profile": dict(entity="profiles", lock=_agent_lock(node_lock), key=_first_arg),
    "save_profile": dict(entity="profiles", lock=_agent_lock(node_lock), key=_first_arg),
    "load_agents": dict(entity="agents"),
    "load_experts": dict(entity="expertise", key=_first_arg),
    # polls
    "load_polls": dict(entity="polls", lock=_polls_lock, records="dict", document="polls"),
    "save_polls": dict(entity="polls", lock=_polls_lock, document="polls"),
    "load_poll": dict(entity="polls", lock=_polls_lock, key=_first_arg),
    "save_poll": dict(entity="polls", lock=_polls_lock, key=lambda p, *a, **k: p["id"]),
    "save_vote": dict(entity="votes", lock=_polls_lock, key=_first_arg),
    "save_poll_status": dict(entity="polls", lock=_polls_lock, key=_first_arg),
    # sessions
    "load_sessions": dict(entity="sessions", records="dict"),
    "load_session": dict(entity="sessions", lock=_session_lock, key=_first_arg),
    "save_session": dict(entity="sessions", lock=lambda s, *a, **k: _session_lock(s["id"]),
                         key=lambda s, *a, **k: s["id"]),
    "save_role": dict(entity="session_roles", lock=_session_lock, key=_first_arg),
    "save_artifact": dict(entity="session_artifacts", lock=_session_lock, key=_first_arg),
    "save_review": dict(entity="session_reviews", lock=_session_lock, key=_first_arg),
    "save_session_phase": dict(entity="sessions", lock=_session_lock, key=_first_arg),
    # what an agent reads every tick (issue 11)
    # poll reads hold the polls lock across both sides, as load_polls does, so a vote cannot land between them
    "load_polls_page": dict(entity="polls", lock=_polls_lock, records="id"),
    "load_sessions_page": dict(entity="sessions", records="id"),
    "load_open_polls": dict(entity="polls", lock=_polls_lock, records="id"),
    "load_roles": dict(entity="session_roles", records="session_id"),
    # every agent's context changes on every tick of the fleet and no one lock covers them all:
    # compare who is known; each context itself is compared by load_context under its node lock
    "load_agent_states": dict(entity="context", records="agent", ignore=("text", "last_heartbeat")),
    "load_agents_by_role": dict(entity="profiles"),
    # a broadcast holds every recipient's inbox lock across both sides (in name order: no deadlock)
    "save_messages": dict(entity="messages", lock=lambda ms, *a, **k: sorted({inbox_lock(m["recipient"]) for m in ms}),
                          key=lambda ms, *a, **k: ",".join(m["id"] for m in ms[:3])),
    # read receipts exist only in the database (phase 1: this process's sent messages, no receipts)
    "load_sent": dict(entity="messages", files=False),
    # the task registry: every task write holds the tasks lock across both sides; the other side of a claim
    # takes exactly the task the authoritative side took (or none)
    "save_task": dict(entity="tasks", lock=_tasks_lock, key=lambda task, *a, **k: task["id"]),
    "load_task": dict(entity="tasks", lock=_tasks_lock, key=_first_arg),
    "claim_task": dict(entity="tasks", kind="write", lock=_tasks_lock, key=_first_arg,
                       mirror=lambda result, args, kwargs: (
                           args[:1], {**dict(zip(("lease_until", "now"), args[1:3])), **kwargs,
                                      "ids": [result["id"]] if result else []})),
    "save_task_result": dict(entity="tasks", lock=_tasks_lock, key=lambda agent, task_id, *a, **k: task_id),
    "save_task_release": dict(entity="tasks", lock=_tasks_lock, key=lambda agent, task_id, *a, **k: task_id),
    "load_tasks_page": dict(entity="tasks", lock=_tasks_lock, records="id"),
}


# ---------------------------------------------------------------------------
# Every file-side failure reaches a caller typed: the helpers of _files raise
# FileStorageError naming the file; this net catches what remains (a folder
# listing refused, say), so that no bare OSError escapes the API.


def _typed_file_errors(fn):
    @functools.wraps(fn)
    def call(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except OSError as exc:
            raise FileStorageError.wrap(exc, None, "access") from exc

    return call


for _name in SHIM_SPEC:
    globals()[_name] = _typed_file_errors(globals()[_name])
del _name

#: The file side as this module defines it, for a read that is not an agent's call (an operator's count of
#: dead letters): the shim replaces the module's names when it is installed, never these.
FILE_SIDE: dict[str, Callable[..., Any]] = {_name: globals()[_name] for _name in SHIM_SPEC}
