"""Phase 1's in-memory history and sent messages are bounded (issue 30): a process that runs for months
keeps the newest entries, not every message it ever saw; readers never trip over a writer."""

from __future__ import annotations

import threading

from federation import core, messaging
from federation.stores import file_history


def test_phase_1_history_keeps_the_newest_entries(fed, monkeypatch):
    monkeypatch.setattr(file_history, "IN_MEMORY_LIMIT", 50)
    fed.phase(1)
    sent = [messaging.send_message("alice", "bob", f"m{n}") for n in range(80)]
    kept = file_history._history[core.tree().root]
    assert len(kept) == 50 and len(file_history._sent[core.tree().root]) == 50
    assert [e["message_id"] for e in messaging.get_history("alice", limit=5)][-1] == sent[-1]
    assert {m["id"] for m in messaging.get_sent("alice", limit=100)} == set(sent[-50:])


def test_readers_beside_a_writer_never_fail(fed, monkeypatch):
    monkeypatch.setattr(file_history, "IN_MEMORY_LIMIT", 20)
    fed.phase(1)
    errors: list[BaseException] = []
    done = threading.Event()

    def write():
        try:
            for n in range(400):
                messaging.send_message("alice", "bob", f"w{n}")
        except BaseException as exc:  # noqa: BLE001 - the test reports it
            errors.append(exc)
        finally:
            done.set()

    writer = threading.Thread(target=write)
    writer.start()
    reads = 0
    while not done.is_set():
        try:
            messaging.get_history("alice", limit=10)
            messaging.get_sent("alice", limit=10)
            reads += 1
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
            break
    writer.join()
    assert not errors and reads > 0


def test_the_gates_path_caches_hold_folders_not_one_entry_per_message(fed):
    """The gate's path caches were keyed by file: every new message's file added an entry, and a full cache
    (4,096) was emptied at once and refilled, churning the allocator under steady traffic (issue 30). Keyed
    by folder (one cache, which the stamps' crc comes from too), 600 messages in phase 2 (a file each) leave
    a few entries; what they answer is unchanged."""
    import os
    import zlib

    from federation.stores import _fs_stamps, _fs_walk

    fed.phase(2)
    _fs_walk._parts_cache.clear()
    for n in range(600):
        messaging.send_message("alice", f"agent{n % 3}", f"m{n}")
        messaging.check_inbox(f"agent{n % 3}")
    assert 0 < len(_fs_walk._parts_cache) <= 30, len(_fs_walk._parts_cache)
    root = str(core.tree().root)
    for path in (f"{root}/inbox/agent1.json", f"{root}/a/b/../c.json", f"{root}/polls.json"):
        assert _fs_walk._parts(root, path) == _fs_walk._split_below(root, path)
        assert _fs_stamps._doc_crc(root, path) == zlib.crc32(os.path.relpath(path, root).encode())
