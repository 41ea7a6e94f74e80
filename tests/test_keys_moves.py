"""A key is a key across every move (issue 29): the same (sender, idempotency key) names its first send in
every phase, after `migrate`, after `sync` in either direction, whether its messages were read or not.
Both engines."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

from federation import config, messaging
from federation.operations.prune import prune
from federation.transfer.keys import key_name
from federation.transfer.migrate import migrate
from federation.transfer.sync import sync


def send(key: str, content: str = "hi") -> str:
    return messaging.send_message("alice", "bob", content, idempotency_key=key)


def received(agent: str = "bob") -> list[str]:
    return [m["content"] for m in messaging.check_inbox(agent)]


def test_phase_1_key_survives_migrate_read_or_unread(fed):
    """Phase 1: k-read's message is read before the migration (no file, no row), k-unread's is not; after
    `migrate`, in phases 3 and 4 the same sends return the first ids and deliver nothing again."""
    fed.phase(1)
    first_read = send("k-read", "one")
    assert received() == ["one"]
    first_unread = send("k-unread", "two")
    assert migrate(settings=config.settings()).exit_code == 0
    for phase in (3, 4):
        fed.phase(phase)
        assert send("k-read", "one") == first_read
        assert send("k-unread", "two") == first_unread
    assert received() == ["two"]  # the unread one, once
    assert send("k-new", "three") != first_read and received() == ["three"]


def test_phase_4_key_survives_sync_to_files_and_the_way_down(fed):
    """Phase 4: a keyed send, read and acknowledged; `sync --to files` writes its key file; in phases 3, 2 and
    1 the same send returns the first id and bob receives nothing more; `sync --to db` then carries nothing."""
    fed.phase(1)
    assert migrate(settings=config.settings()).exit_code == 0
    fed.phase(4)
    first = send("k4")
    got = messaging.receive("bob", lease=30)
    assert [m["id"] for m in got] == [first] and messaging.ack("bob", [first]) == [first]
    result = sync("files", phase=4, settings=config.settings())
    key_file = fed.root / "nodes" / "alice" / "sent_keys" / key_name("k4")
    assert str(key_file) in {c.target for c in result.changes}
    assert json.loads(key_file.read_text())["ids"] == [first]
    for phase in (3, 2, 1):
        fed.phase(phase)
        assert send("k4") == first, phase
        assert received() == []
    fed.phase(2)
    assert [c for c in sync("db", phase=2, settings=config.settings()).changes if c.action == "key"] == []
    again = sync("files", phase=4, settings=config.settings())  # nothing to add: a rerun writes no key file
    assert [c for c in again.changes if "sent_keys" in c.target] == []


def test_keyed_broadcast_across_migrate(fed):
    fed.phase(1)
    for agent in ("bob", "carol"):
        messaging.send_message("alice", agent, "hello")  # make the agents known
    received("bob"), received("carol")
    ids = messaging.broadcast("alice", "all hands", idempotency_key="b1")
    assert len(ids) >= 2 and received("bob") == ["all hands"]
    assert migrate(settings=config.settings()).exit_code == 0
    fed.phase(3)
    assert sorted(messaging.broadcast("alice", "all hands", idempotency_key="b1")) == sorted(ids)
    assert received("bob") == [] and received("carol") == ["all hands"]


def test_a_key_file_naming_another_senders_message_is_not_carried(fed):
    """A planted key file in alice's folder naming carol's message: `migrate` does not carry it, and alice's
    keyed send in phase 3 sends (a new id), never returning carol's id."""
    fed.phase(1)
    carols = messaging.send_message("carol", "bob", "from carol")
    folder = fed.root / "nodes" / "alice" / "sent_keys"
    folder.mkdir(parents=True)
    (folder / key_name("forged")).write_text(json.dumps(
        {"sender": "alice", "key": "forged", "ids": [carols], "recipients": ["bob"], "created_at": "x"}))
    assert migrate(settings=config.settings()).exit_code in (0, 3)
    fed.phase(3)
    mine = send("forged", "from alice")
    assert mine != carols
    assert sorted(received()) == ["from alice", "from carol"]


def test_prune_removes_kept_keys_past_retention(fed):
    fed.phase(1)
    first = send("old")
    received()
    assert migrate(settings=config.settings()).exit_code == 0
    store = fed.store()
    count = lambda: store.db.fetchone("SELECT COUNT(*) FROM idempotency_keys")[0]  # noqa: E731
    assert count() == 1
    prune("30d", settings=config.settings())
    assert count() == 1  # within retention
    prune("1s", now=datetime.now(timezone.utc) + timedelta(days=1), settings=config.settings())
    assert count() == 0
    fed.phase(3)
    assert send("old") != first  # past retention, as a key on a pruned message row
