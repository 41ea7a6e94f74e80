"""Delivery on the legacy file tree: leases, acknowledgements, dead letters (issue 19; the layout:
docs/delivery.md).

The bodies of :mod:`federation.core`'s delivery functions (``core`` binds them to its tree; the shim wraps
``core``'s names).  A received message moves from inbox/ to leased/ by one rename (the claim: legacy
readers of inbox/ never see it again); its file is left as it was.  The leases of an agent live in one
journal, leased/.leases.json (``{id: [attempt, lease_until]}``), written once per receive or ack, after
the renames: a leased file the journal does not name (its receive died between the two) is an expired
lease of attempt 0, taken back by the next receive.  Everything happens under the inbox lock, which
legacy claims take too; the journal is on disk, so a lease survives the process that took it.  A lease
over after max_attempts deliveries moves the file to dead/, rewritten with "attempt", "lease_until" and
"dead_at".  An ack removes the file, as a legacy claim does.  A path is built from a file's name, never
from its body.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from ..domain import clock as _clock
from ..domain import delivery as _delivery
from ..domain import validate as _validate
from ..domain.entities import DELIVERY_FIELDS, MESSAGE_FIELDS, MESSAGES, inbox_lock, message_mismatch
from ..domain.layout import document_name, is_document_name, stem
from ..errors import CorruptFileError, FileStorageError
from .file_messages import message_from_file, order
from .file_reads import read_or_skip, skip
from .files import Tree, atomic_write_json, list_dir, locked, open_folder, read_json, read_regular, remove, rename_at

__all__ = ["lease_inbox", "ack_messages", "load_dead_letters"]


def _json_names(t: Tree, directory: Path) -> list[str]:
    """The message files' names in *directory*, reached from the root without following a link."""
    try:
        names = list_dir(directory, root=t.root)
    except CorruptFileError as exc:  # the folder (or one above it) is a link or a file: nothing is read through it
        skip(directory, exc.reason)
        return []
    return [n for n in names if is_document_name(n)]


def _leases(t: Tree, agent: str, now: str | None = None) -> dict[str, tuple[int, str | None]]:
    """The lease journal of *agent*: ``{id: (attempt, lease_until)}``.  An unreadable journal reads as
    empty: every leased message is then an expired lease (delivered again, never lost).  So does an entry
    out of range (an attempt above the highest ``FEDERATION_MAX_ATTEMPTS``, a lease ending more
    than two days ahead, a time that is not one: domain.delivery), skipped and logged; the next receive drops it."""
    path = t.leases_file(agent)
    try:
        data = read_json(path, dict, {}, root=t.root)
    except CorruptFileError:
        return {}
    now = now or _clock.now()
    out = {}
    for mid, entry in data.items():
        lease, problem = _delivery.journal_entry(entry, now)
        if lease is None:
            skip(path, f"the lease of {str(mid)[:140]!r}: {problem}")
        else:
            out[mid] = lease
    return out


def _save_leases(t: Tree, agent: str, leases: dict[str, tuple[int, str | None]]) -> None:
    path = t.leases_file(agent)
    if leases:
        atomic_write_json(path, {mid: list(entry) for mid, entry in sorted(leases.items())}, root=t.root)
    else:
        remove(path, root=t.root)


def _message_named(t: Tree, path: Path, agent: str) -> dict | None:
    """The message of a leased or inbox file, its id the file's name; None when it is gone or invalid
    (a link, FIFO or oversized file is never followed or read: skipped and logged, as inbox reads do)."""
    try:
        raw = read_regular(path, root=t.root)
    except CorruptFileError as exc:
        skip(path, exc.reason)
        return None
    except OSError as exc:  # EACCES, EIO...: typed, naming the file
        raise FileStorageError.wrap(exc, path, "read") from exc
    message = message_from_file(raw, path, agent)
    if message is not None:
        message["id"] = stem(path.name)
    return message


def _dead_record(t: Tree, path: Path, agent: str) -> dict | None:
    """A dead/ file: the message and its delivery fields; None when it is gone or invalid (a link, a body
    naming another id or recipient, a delivery field out of range: skipped and logged, as inbox reads do)."""
    data = read_or_skip(t, path)
    if data is None:
        return None
    reason = message_mismatch(data, stem(path.name), agent) or _delivery.delivery_problem(data)
    if reason:
        skip(path, reason)
        return None
    record = MESSAGES.record(data, fallback={"recipient": agent})
    record["id"] = stem(path.name)
    record["attempt"] = data.get("attempt", 0)
    for field in ("lease_until", "dead_at"):
        record[field] = data.get(field)
    return record


def _public(record: dict, *fields: str) -> dict:
    return {**{f: record.get(f) for f in MESSAGE_FIELDS}, **{f: record.get(f) for f in fields}}


def _bury(t: Tree, agent: str, name: str, message: dict, attempt: int, lease_until: str | None, dead_at: str) -> None:
    """Move a leased message to dead/, its delivery fields written into it."""
    atomic_write_json(t.dead(agent) / name, {**{f: message.get(f) for f in MESSAGE_FIELDS}, "attempt": attempt,
                                             "lease_until": lease_until, "dead_at": dead_at}, root=t.root)
    remove(t.leased(agent) / name, root=t.root)


def lease_inbox(t: Tree, agent: str, lease_until: str, now: str, limit: int | None = None, max_attempts: int = 5,
                ids: list[str] | None = None) -> list[dict]:
    """Lease *agent*'s deliverable messages (all, or only *ids*), oldest first, until *lease_until*.

    Deliverable: new (in inbox/) or leased before with the lease over (*now*
    past it); a lease over after *max_attempts* deliveries moves the message to
    dead/ instead.  Each message comes back with ``attempt`` and ``lease_until``.
    """
    with locked(t, inbox_lock(agent)):
        inbox, leased = t.inbox(agent), t.leased(agent)
        leases = _leases(t, agent, now)
        held = _json_names(t, leased)
        changed = set(leases) - {stem(n) for n in held}  # entries whose file is gone: dropped below
        for mid in changed:
            del leases[mid]
        candidates: list[tuple[dict, int, bool]] = []  # (message, attempts so far, still in inbox/)
        for name in held:
            mid = stem(name)
            attempt, until = leases.get(mid, (0, None))
            if until is not None and until >= now:
                continue  # under lease
            message = _message_named(t, leased / name, agent)
            if message is None:
                continue
            if attempt >= max_attempts:  # delivered max times, never acknowledged
                _bury(t, agent, name, message, attempt, until, now)
                leases.pop(mid, None)
                changed.add(mid)
                continue
            candidates.append((message, attempt, False))
        taken = set(held)
        for name in _json_names(t, inbox):
            if name in taken:
                continue  # a copy already delivered: the inbox file is a leftover, not a new message
            message = _message_named(t, inbox / name, agent)
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
                    skip(Path(exc.path), exc.reason)
                dst = folders.enter_context(open_folder(leased, t.root, create=True))  # a linked leased/: typed
            for message, attempt, new in candidates:
                name = document_name(message["id"])
                if new:
                    try:
                        if src is None or not rename_at(src, dst, name, inbox / name):  # the claim
                            continue  # gone since the listing (a reader that ignores the lock)
                    except CorruptFileError as exc:  # swapped for a link or a FIFO since it was read
                        skip(inbox / name, exc.reason)
                        continue
                leases[message["id"]] = (attempt + 1, lease_until)
                changed.add(message["id"])
                out.append({**message, "attempt": attempt + 1, "lease_until": lease_until})
        if changed:
            _save_leases(t, agent, leases)
        return out


def ack_messages(t: Tree, agent: str, ids: list[str], read_at: str) -> list[dict]:
    """Acknowledge *agent*'s delivered messages among *ids* (leased or dead): their files are removed,
    as a legacy claim removes a read message; the messages acknowledged now, in the order given."""
    done = []
    with locked(t, inbox_lock(agent)):
        leases = None
        for message_id in dict.fromkeys(ids):
            name = document_name(_validate.ident(message_id, "message id"))
            for folder in (t.leased(agent), t.dead(agent)):
                message = _message_named(t, folder / name, agent)
                if message is not None and remove(folder / name, root=t.root):
                    done.append(message)
                    if folder == t.leased(agent):
                        leases = _leases(t, agent) if leases is None else leases
                        leases.pop(message_id, None)
                    break
        if leases is not None:
            _save_leases(t, agent, leases)
    return done


def load_dead_letters(t: Tree, agents: list[str], now: str, max_attempts: int = 5) -> list[dict]:
    """Messages to *agents* delivered *max_attempts* times, never acknowledged (in dead/, or leased with the
    last lease over)."""
    out = []
    for name in agents:
        if not _validate.is_agent(name):
            continue
        for file in _json_names(t, t.dead(name)):
            record = _dead_record(t, t.dead(name) / file, name)
            if record is not None:
                out.append(record)
        leases = _leases(t, name, now)
        for file in _json_names(t, t.leased(name)):
            attempt, until = leases.get(stem(file), (0, None))
            if until is not None and until < now and attempt >= max_attempts:
                message = _message_named(t, t.leased(name) / file, name)
                if message is not None:
                    out.append({**message, "attempt": attempt, "lease_until": until, "dead_at": until})
    return [_public(r, *DELIVERY_FIELDS) for r in order(out)]
