"""At-least-once delivery (issue 19): leases, acknowledgements, redelivery, dead letters, idempotent sends.

Real processes, both engines, every phase where the claim is about phases:
a receiver SIGKILLed after receive loses nothing; concurrent receivers take
disjoint sets; concurrent keyed sends make one message; a message never
acknowledged ends as a dead letter; pulse(wait) wakes on a send.
"""

from __future__ import annotations

import json
import os
import time
from datetime import datetime, timedelta, timezone

import pytest

from federation import config, messaging
from federation.errors import ConflictError, StorageError, ValidationError

from _procs import WAIT_FOR_GO, finish

PHASES = (1, 2, 3, 4)


def _inbox_names(fed, agent: str) -> list[str]:
    """What a legacy reader of nodes/{agent}/inbox/*.json sees."""
    inbox = fed.root / "nodes" / agent / "inbox"
    return sorted(p.stem for p in inbox.glob("*.json")) if inbox.is_dir() else []


@pytest.mark.parametrize("phase", PHASES)
def test_receive_then_sigkill_is_redelivered_after_the_lease_then_acked_never_again(fed, phase):
    """A receiver killed right after receive returned: the message comes back after its lease with attempt 2;
    acknowledged, it is read (receipt) and never delivered again; legacy readers never see it meanwhile."""
    fed.phase(phase)
    mid = messaging.send_message("alice", "bob", "do the thing")
    victim = fed.run_py(
        "import os, signal, json\n"
        "from federation import messaging\n"
        "got = messaging.receive('bob', lease=2)\n"
        "print(json.dumps([[m['id'], m['attempt']] for m in got]), flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n", phase=phase, check=False)
    assert victim.returncode == -9, victim.stderr[-2000:]
    assert json.loads(victim.stdout) == [[mid, 1]]
    # leased: nobody else gets it, not even as a new message
    assert messaging.receive("bob", lease=2) == []
    assert messaging.check_inbox("bob") == [] and messaging.peek_inbox("bob") == []
    if phase <= 3:
        assert _inbox_names(fed, "bob") == []  # legacy readers of inbox/ never see a leased message
    time.sleep(2.3)
    survivor = fed.run_py(
        "import json\n"
        "from federation import messaging\n"
        "got = messaging.receive('bob', lease=2)\n"
        "acked = messaging.ack('bob', [m['id'] for m in got])\n"
        "print(json.dumps({'got': [[m['id'], m['attempt'], m['content']] for m in got], 'acked': acked}))\n",
        phase=phase)
    out = json.loads(survivor.stdout)
    assert out == {"got": [[mid, 2, "do the thing"]], "acked": [mid]}
    time.sleep(2.3)
    assert messaging.receive("bob", lease=2) == [] and messaging.dead_letters("bob") == []
    assert messaging.ack("bob", [mid]) == []  # acknowledged once
    if phase >= 2:
        sent = messaging.get_sent("alice")
        assert [(m["id"], m["read_at"] is not None) for m in sent] == [(mid, True)]
    if phase <= 3:
        assert not list((fed.root / "nodes" / "bob").rglob(f"{mid}.json"))


@pytest.mark.parametrize("phase, limit", [(2, 7), (4, 7), (4, 100)])
def test_four_concurrent_receivers_get_disjoint_sets_covering_all(fed, phase, limit):
    """4 processes receive (and ack) from one inbox of 400 messages: each message to exactly one of them."""
    fed.phase(phase)
    sent = set()
    for i in range(400):
        sent.add(messaging.send_message("alice", "bob", f"m{i}"))
    go = fed.root.parent / "go"
    code = WAIT_FOR_GO + """
import json
from federation import messaging
mine = []
while True:
    got = messaging.receive('bob', lease=120, limit=LIMIT)
    if not got:
        break
    mine += [m['id'] for m in got]
    assert messaging.ack('bob', [m['id'] for m in got]) == [m['id'] for m in got]
print(json.dumps(mine))
""".replace("LIMIT", str(limit))
    procs = [fed.spawn(code, str(go), phase=phase) for _ in range(4)]
    time.sleep(0.5)
    go.touch()
    sets = [json.loads(out) for out in finish(procs, timeout=300)]
    everything = [i for s in sets for i in s]
    assert len(everything) == len(set(everything)) == 400  # disjoint
    assert set(everything) == sent  # covering all
    assert messaging.receive("bob") == [] and messaging.check_inbox("bob") == []


@pytest.mark.parametrize("phase", (1, 2, 4))
def test_four_processes_sending_with_one_key_make_one_message(fed, phase):
    """The same (sender, key) from 4 processes at once: one message, every process gets its id."""
    fed.phase(phase)
    go = fed.root.parent / "go"
    code = WAIT_FOR_GO + """
from federation import messaging
print(messaging.send_message('alice', 'bob', 'once only', idempotency_key='order-42'))
"""
    procs = [fed.spawn(code, str(go), phase=phase) for _ in range(4)]
    time.sleep(0.5)
    go.touch()
    ids = {out.strip() for out in finish(procs, timeout=120)}
    assert len(ids) == 1
    got = messaging.check_inbox("bob")
    assert [(m["id"], m["content"]) for m in got] == [(ids.pop(), "once only")]
    # the key is kept with the message: the same key again still writes nothing
    assert messaging.send_message("alice", "bob", "again", idempotency_key="order-42") == got[0]["id"]
    assert messaging.check_inbox("bob") == []
    # another sender's key of the same text is its own
    assert messaging.send_message("carol", "bob", "mine", idempotency_key="order-42") != got[0]["id"]


@pytest.mark.parametrize("phase", PHASES)
def test_keyed_broadcast_is_sent_once(fed, phase):
    fed.phase(phase)
    for agent in ("bob", "carol"):
        messaging.send_message("alice", agent, "hello")
    first = messaging.broadcast("alice", "all hands", idempotency_key="b1")
    assert len(first) == 2
    assert messaging.broadcast("alice", "all hands", idempotency_key="b1") == first
    assert [m["content"] for m in messaging.check_inbox("bob")] == ["hello", "all hands"]


@pytest.mark.parametrize("phase", PHASES)
def test_a_message_never_acked_ends_in_dead_letters_after_5_attempts(fed, phase):
    """Five deliveries, never acknowledged: not delivered a sixth time, listed by dead_letters; ack clears it."""
    fed.phase(phase)
    mid = messaging.send_message("alice", "bob", "poison")
    other = messaging.send_message("alice", "bob", "fine")
    attempts = []
    for _ in range(5):
        got = messaging.receive("bob", lease=0.3)
        attempts.append([m["attempt"] for m in got if m["id"] == mid])
        messaging.ack("bob", [m["id"] for m in got if m["id"] == other])
        time.sleep(0.4)
    assert attempts == [[1], [2], [3], [4], [5]]
    assert messaging.receive("bob", lease=0.3) == []
    dead = messaging.dead_letters("bob")
    assert [(m["id"], m["attempt"], m["content"]) for m in dead] == [(mid, 5, "poison")]
    assert dead[0]["dead_at"] is not None
    time.sleep(0.4)
    assert messaging.receive("bob", lease=0.3) == []  # still not delivered again
    assert messaging.ack("bob", [mid]) == [mid]
    assert messaging.dead_letters("bob") == []


def test_max_attempts_is_configurable(fed, monkeypatch):
    fed.phase(4)
    monkeypatch.setenv("FEDERATION_MAX_ATTEMPTS", "2")
    mid = messaging.send_message("alice", "bob", "x")
    for attempt in (1, 2):
        assert [m["attempt"] for m in messaging.receive("bob", lease=0.2)] == [attempt]
        time.sleep(0.3)
    assert messaging.receive("bob", lease=0.2) == []
    assert [m["id"] for m in messaging.dead_letters("bob")] == [mid]


@pytest.mark.parametrize("phase", (1, 4))
def test_pulse_acks_first_then_leases_and_waits_for_a_send(fed, phase):
    """pulse(ack=...) acknowledges, pulse(lease=...) leases, pulse(wait=...) returns as soon as a send lands."""
    fed.phase(phase)
    mid = messaging.send_message("alice", "bob", "first")
    tick = messaging.pulse("bob", lease=30)
    assert [(m["id"], m["attempt"]) for m in tick["messages"]] == [(mid, 1)] and "acked" not in tick
    sender = fed.spawn("import time\nfrom federation import messaging\ntime.sleep(1.5)\n"
                       "print(messaging.send_message('alice', 'bob', 'second'))\n", phase=phase)
    t0 = time.monotonic()
    tick = messaging.pulse("bob", lease=30, ack=[mid], wait=20)
    waited = time.monotonic() - t0
    second = finish([sender])[0].strip()
    assert tick["acked"] == [mid]
    assert [m["id"] for m in tick["messages"]] == [second]
    assert 1.0 < waited < 15, waited  # woke on the send, long before the 20 s
    t0 = time.monotonic()
    assert messaging.pulse("bob", lease=30, wait=0.5)["messages"] == []
    assert time.monotonic() - t0 >= 0.5


def test_bad_arguments_are_typed_errors(fed):
    fed.phase(4)
    for bad in (0, -1, "60", True, 10 ** 9):
        with pytest.raises(ValidationError, match="lease"):
            messaging.receive("bob", lease=bad)
    for bad in ("id", [1], None, ["../x"]):
        with pytest.raises(ValidationError):
            messaging.ack("bob", bad)
    with pytest.raises(ValidationError, match="wait"):
        messaging.pulse("bob", wait=31)
    with pytest.raises(ValidationError, match="idempotency_key"):
        messaging.send_message("alice", "bob", "x", idempotency_key="")
    with pytest.raises(ValidationError, match="limit"):
        messaging.receive("bob", limit=0)


def test_connection_lost_during_a_keyed_send_retried_makes_one_message(fed, monkeypatch):
    """The commit lands but the client hears "may or may not have been applied": the keyed send is retried
    (by the federation, and again by the caller after it gives up), and exactly one message exists."""
    fed.phase(4)
    db = fed.store().db
    real_commit = db.dialect.commit
    losses = {"left": 0}

    def commit_then_lose(conn):
        real_commit(conn)
        if losses["left"] > 0:
            losses["left"] -= 1
            raise StorageError("lost the connection while committing; the change may or may not have been applied")

    monkeypatch.setattr(db.dialect, "commit", commit_then_lose)
    losses["left"] = 1  # once: the federation's own retry finds the key
    first = messaging.send_message("alice", "bob", "exactly once", idempotency_key="k1")
    losses["left"] = 10  # longer than the federation retries: the caller sees the error, then retries
    with pytest.raises(StorageError, match="may or may not"):
        messaging.send_message("alice", "bob", "exactly once too", idempotency_key="k2")
    losses["left"] = 0
    second = messaging.send_message("alice", "bob", "exactly once too", idempotency_key="k2")
    got = messaging.check_inbox("bob")
    assert sorted((m["id"], m["content"]) for m in got) == sorted(
        [(first, "exactly once"), (second, "exactly once too")])
    rows = db.fetchall("SELECT COUNT(*) FROM messages WHERE sender = 'alice'")
    assert rows[0][0] == 2


@pytest.mark.parametrize("phase", (2, 3))
def test_dual_phases_keep_both_sides_in_step(fed, phase):
    """Phases 2-3: a lease, an ack and a dead letter land on both sides (no mismatch, same state)."""
    from structlog.testing import capture_logs

    fed.phase(phase)
    with capture_logs() as logs:
        mid = messaging.send_message("alice", "bob", "x")
        got = messaging.receive("bob", lease=30)
        assert [m["id"] for m in got] == [mid]
        row = fed.store().db.fetchone("SELECT attempt, lease_until, read_at FROM messages WHERE id = ?", (mid,))
        assert row[0] == 1 and row[1] == got[0]["lease_until"] and row[2] is None
        assert (fed.root / "nodes" / "bob" / "leased" / f"{mid}.json").is_file()
        assert messaging.ack("bob", [mid]) == [mid]
        assert fed.store().db.fetchone("SELECT read_at FROM messages WHERE id = ?", (mid,))[0] is not None
        assert not (fed.root / "nodes" / "bob" / "leased" / f"{mid}.json").exists()
    bad = [e for e in logs if e.get("event") in ("shadow_mismatch", "shadow_error")]
    assert bad == []


def test_migrate_and_report_understand_leased_acknowledged_and_dead_messages(fed, monkeypatch):
    """Files written in phase 1 (one new, one leased, one acknowledged, one dead) migrate without invalid or
    dropped entries; in phase 2 the report finds both sides equal after receive, ack and a dead letter;
    prune never removes a leased or dead message."""
    from federation.transfer.migrate import migrate
    from federation.operations.prune import prune
    from federation.transfer.report import build_report

    monkeypatch.setenv("FEDERATION_MAX_ATTEMPTS", "1")
    fed.phase(1)
    ids = {name: messaging.send_message("alice", "bob", name) for name in ("dies", "leased", "acked", "new")}
    messaging.receive("bob", lease=0.2, limit=1)  # "dies" was sent first: lease it, and let it die below
    time.sleep(0.3)
    messaging.receive("bob", lease=600, limit=1)  # dead letter made; "leased" leased
    got = messaging.receive("bob", lease=600, limit=1)  # "acked"
    messaging.ack("bob", [m["id"] for m in got])
    dead, leased = ids["dies"], ids["leased"]
    assert [m["id"] for m in messaging.dead_letters("bob")] == [dead]
    keyed = messaging.send_message("alice", "carol", "keyed", idempotency_key="once")
    result = migrate(settings=config.settings())
    assert result.exit_code == 0 and result.invalid == [] and result.dropped_fields == []
    # the key travelled with its message: the same send in a database phase still writes nothing
    fed.phase(4)
    assert messaging.send_message("alice", "carol", "keyed", idempotency_key="once") == keyed
    fed.phase(1)
    delivery = {r[0]: r[1:] for r in fed.store().db.fetchall(
        "SELECT id, attempt, lease_until IS NOT NULL, dead_at IS NOT NULL FROM messages")}
    assert delivery[dead] == (1, True, True) and delivery[leased] == (1, True, False)
    assert delivery[ids["new"]] == (0, False, False)
    fed.phase(2)
    assert build_report(settings=config.settings()).consistent
    # phase 2: new deliveries, leases, acks and dead letters land on both sides alike
    later = messaging.send_message("alice", "bob", "later")
    assert [m["id"] for m in messaging.receive("bob", lease=0.2)] == [ids["new"], later]
    time.sleep(0.3)
    assert messaging.receive("bob", lease=0.2) == []  # max attempts 1: dead letters now
    assert [m["id"] for m in messaging.dead_letters("bob")] == [dead, ids["new"], later]
    assert build_report(settings=config.settings()).consistent
    # prune removes read messages only: never a leased or a dead one
    fed.phase(4)
    prune(older_than="1s", now=datetime.now(timezone.utc) + timedelta(days=1), settings=config.settings())
    left = {r[0] for r in fed.store().db.fetchall("SELECT id FROM messages")}
    assert {dead, leased, later} <= left and ids["acked"] not in left


def test_pulse_wait_without_a_watcher_still_returns_on_a_send(fed, monkeypatch):
    """A watcher that cannot start (say the LISTEN connection is refused) degrades to looking every 0.25 s."""
    import threading

    from federation.stores import wait as _wait

    fed.phase(4)

    def refuse(*args):
        raise OSError("no watcher today")

    monkeypatch.setattr(_wait, "watcher", refuse)
    assert messaging.peek_inbox("bob") == []  # the schema exists before the sending thread starts
    timer = threading.Timer(0.5, lambda: messaging.send_message("alice", "bob", "late"))
    timer.start()
    t0 = time.monotonic()
    tick = messaging.pulse("bob", lease=30, wait=10)
    timer.join()
    assert [m["content"] for m in tick["messages"]] == ["late"] and time.monotonic() - t0 < 5


class _Lost(ConnectionResetError):
    """The reply of a statement that ran, lost on the way back (as a dropped connection)."""


def _lose_replies(monkeypatch, db, sql_start: str, times: int) -> dict:
    """The next *times* statements starting with *sql_start* run, then their reply is lost."""
    from federation.stores.dialect import Tx

    real_disconnect = db.dialect.is_disconnect
    left = {"n": times}

    def losing(real):
        def method(self, sql, *args):
            out = real(self, sql, *args)
            if left["n"] > 0 and sql.lstrip().startswith(sql_start):
                left["n"] -= 1
                raise _Lost("connection reset after the statement ran")
            return out

        return method

    for name in ("execute", "executemany", "fetchall"):
        monkeypatch.setattr(Tx, name, losing(getattr(Tx, name)))
    monkeypatch.setattr(db.dialect, "is_disconnect", lambda exc: isinstance(exc, _Lost) or real_disconnect(exc))
    return left


def test_a_send_whose_reply_was_lost_is_sent_again_and_lands_once(fed, monkeypatch):
    """One-statement send (issue 27): the reply lost after the row landed, the federation sends it again;
    one message, one history entry.  The same id for another message is refused, nothing written."""
    fed.phase(4)
    db = fed.store().db
    # PostgreSQL: the one statement; SQLite: the history insert, the message's row written before it
    left = _lose_replies(monkeypatch, db, "WITH" if db.dialect.send_sql else "INSERT INTO message_history", 1)
    mid = messaging.send_message("alice", "bob", "once")
    assert left["n"] == 0  # the loss happened
    assert [m["id"] for m in messaging.peek_inbox("bob")] == [mid]
    assert [(h["direction"], h["message_id"]) for h in messaging.get_history("alice")] == [("sent", mid)]
    message = messaging.peek_inbox("bob")[0]
    fed.store().save_message(message)  # the same message again: nothing more
    with pytest.raises(ConflictError, match=mid):
        fed.store().save_message({**message, "content": "another"})
    assert [(h["direction"], h["message_id"]) for h in messaging.get_history("alice")] == [("sent", mid)]
    assert [m["content"] for m in messaging.check_inbox("bob")] == ["once"]


def test_ack_whose_reply_was_lost_says_so_and_the_message_stays_acknowledged(fed, monkeypatch):
    """An ack is one statement that must not run twice (a second run acknowledges nothing): a reply lost is
    a StorageError saying it may have been applied, and it was: never delivered again."""
    fed.phase(4)
    mid = messaging.send_message("alice", "bob", "x")
    assert [m["id"] for m in messaging.receive("bob", lease=0.3)] == [mid]
    statement = "WITH" if fed.store().db.dialect.ack_sql else "UPDATE messages SET read_at"
    _lose_replies(monkeypatch, fed.store().db, statement, 1)
    with pytest.raises(StorageError, match="may or may not"):
        messaging.ack("bob", [mid])
    time.sleep(0.4)
    assert messaging.receive("bob", lease=0.3) == [] and messaging.dead_letters("bob") == []
    assert messaging.ack("bob", [mid]) == []


def test_ack_takes_only_the_callers_delivered_messages_by_any_number_of_ids(fed):
    """ack acknowledges exactly the caller's delivered, unacknowledged messages among the ids: not another
    agent's, not a new one, not an unknown id, once for an id given twice; 600 at once (more than one
    statement's worth on SQLite) all land."""
    fed.phase(4)
    mine = [messaging.send_message("alice", "bob", f"m{i}") for i in range(600)]
    theirs = messaging.send_message("alice", "carol", "not bob's")
    got = messaging.receive("bob")
    assert [m["id"] for m in got] == mine
    assert [m["id"] for m in messaging.receive("carol")] == [theirs]
    new = messaging.send_message("alice", "bob", "never received")
    asked = [mine[0], theirs, new, "0" * 32, mine[0], mine[1]]
    assert messaging.ack("bob", asked) == [mine[0], mine[1]]
    assert messaging.ack("bob", mine) == mine[2:]
    assert messaging.ack("carol", [theirs]) == [theirs]
    assert [m["id"] for m in messaging.check_inbox("bob")] == [new]


def test_a_due_dead_letter_ahead_of_the_limit_is_marked_and_the_receive_still_fills(fed, monkeypatch):
    """A receive's pick meets an expired lease at max attempts first: it marks that one dead (listed by
    dead_letters, never delivered again) and still hands out *limit* deliverable messages."""
    fed.phase(4)
    monkeypatch.setenv("FEDERATION_MAX_ATTEMPTS", "1")
    dies = messaging.send_message("alice", "bob", "dies")
    rest = [messaging.send_message("alice", "bob", f"m{i}") for i in range(3)]
    assert [m["id"] for m in messaging.receive("bob", lease=0.2, limit=1)] == [dies]
    time.sleep(0.3)
    got = messaging.receive("bob", lease=600, limit=2)
    assert [(m["id"], m["attempt"]) for m in got] == [(rest[0], 1), (rest[1], 1)]
    dead = messaging.dead_letters("bob")
    assert [(m["id"], m["attempt"]) for m in dead] == [(dies, 1)]
    marked = fed.store().db.fetchone("SELECT dead_at, lease_until FROM messages WHERE id = ?", (dies,))
    assert marked[0] is not None and marked[0] > marked[1]  # marked by the receive, after its lease ended
    assert [m["id"] for m in messaging.receive("bob", lease=600)] == [rest[2]]


def test_a_version_6_database_is_upgraded_and_keeps_messages_leases_and_dead_letters(fed, monkeypatch):
    """A database made at schema 6 (the leased-rows index) is upgraded to 7 on first open: the index is gone
    and every message keeps its state --
    new, leased, a due dead letter, a marked dead letter, acknowledged (still in the history), keyed."""
    from federation.stores import schema
    from federation.stores.sqlstore import forget_stores

    fed.phase(4)
    monkeypatch.setenv("FEDERATION_MAX_ATTEMPTS", "1")
    with monkeypatch.context() as m:
        m.setattr(schema, "MIGRATIONS", [v for v in schema.MIGRATIONS if v[0] <= 6])
        m.setattr(schema, "LATEST", 6)
        ids = {name: messaging.send_message("alice", "bob", name) for name in ("buried", "due", "leased", "acked")}
        keyed = messaging.send_message("alice", "bob", "keyed", idempotency_key="k1")
        assert [x["id"] for x in messaging.receive("bob", lease=0.2, limit=2)] == [ids["buried"], ids["due"]]
        time.sleep(0.3)
        messaging.receive("bob", lease=600, limit=1)  # the pick meets both first: marked dead; "leased" leased
        fed.store().db.write(lambda tx: tx.execute("UPDATE messages SET dead_at = NULL WHERE id = ?", (ids["due"],)))
        got = messaging.receive("bob", lease=600, limit=1)
        assert [x["id"] for x in got] == [ids["acked"]] and messaging.ack("bob", [ids["acked"]]) == [ids["acked"]]
        db = fed.store().db
        assert db.schema_version() == 6 and "idx_messages_leased" in _indexes(fed)
        before = db.fetchall("SELECT id, attempt, lease_until, dead_at, read_at FROM messages ORDER BY id")
    forget_stores()
    db = fed.store().db
    db.ensure_schema()
    assert db.fetchall("SELECT version FROM schema_version ORDER BY version") == [(v,) for v, _ in schema.MIGRATIONS]
    assert "idx_messages_leased" not in _indexes(fed)
    assert db.fetchall("SELECT id, attempt, lease_until, dead_at, read_at FROM messages ORDER BY id") == before
    assert [x["id"] for x in messaging.dead_letters("bob")] == [ids["buried"], ids["due"]]
    assert [(x["id"], x["attempt"]) for x in messaging.receive("bob", lease=600)] == [(keyed, 1)]  # not "leased"
    assert messaging.send_message("alice", "bob", "keyed", idempotency_key="k1") == keyed
    received = [e["message_id"] for e in messaging.get_history("bob") if e["direction"] == "received"]
    assert ids["acked"] in received


def _indexes(fed) -> set[str]:
    sql = ("SELECT indexname FROM pg_indexes WHERE tablename = 'messages'" if fed.engine == "postgresql"
           else "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'messages'")
    return {r[0] for r in fed.store().db.fetchall(sql)}


@pytest.mark.postgresql_only
def test_a_lease_on_postgresql_writes_no_index_entry(fed):
    """Every lease of a receive is a HOT update on PostgreSQL where the page has room (here: made by the
    test): no index covers a column a lease changes -- a new index on lease_until or attempt makes this fail."""
    fed.phase(4)
    db = fed.store().db
    db.write(lambda tx: tx.execute("ALTER TABLE messages SET (fillfactor = 30)"))
    for i in range(50):
        messaging.send_message("alice", "bob", f"m{i}")

    def counts() -> tuple:
        db.fetchone("SELECT pg_stat_force_next_flush()")  # this connection's counts, now
        return db.fetchone("SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = 'messages'")

    start = counts()
    assert len(messaging.receive("bob", lease=600, limit=50)) == 50
    end = counts()
    assert (end[0] - start[0], end[1] - start[1]) == (50, 50)


@pytest.mark.postgresql_only
def test_lease_and_ack_find_rows_by_primary_key_without_statistics(fed):
    """On a table the planner knows nothing about, a receive's lease and an ack reach the rows through the
    primary key (and the pick through the deliverable index): never a whole-table scan or a hash of the table."""
    from federation.stores import sql_messages as sm

    from federation.domain.clock import new_id, now

    fed.phase(4)
    db = fed.store().db
    for start in range(0, 6000, 1000):  # enough rows that reading them all costs more than 100 probes
        fed.store().save_messages([{"id": new_id(), "sender": "alice", "recipient": "bob" if i % 3 else "carol",
                                    "content": f"m{i}", "message_type": "task", "reply_to": None, "timestamp": now()}
                                   for i in range(start, start + 1000)])
    ids = [m["id"] for m in messaging.receive("bob", lease=600, limit=100)]
    d = db.dialect
    lease = d.lease_sql.format(pick=sm._PICK, lease=sm._LEASE_SET_DEAD, deliverable=sm._DELIVERABLE,
                               returning=sm._LEASE_RETURNING)
    stamp = "2026-01-01T00:00:00+00:00"
    plans = {
        "lease": db.fetchall("EXPLAIN " + lease, d.lease_params(("bob", stamp, 5, 100), (5, 5, stamp, 5, stamp), stamp)),
        "ack": db.fetchall("EXPLAIN " + d.ack_sql.format(columns=sm._MSG_COLS), (ids, "bob", stamp)),
    }
    for name, rows in plans.items():
        plan = "\n".join(r[0] for r in rows)
        assert "messages_pkey" in plan and "Seq Scan on messages" not in plan and "Hash" not in plan, (name, plan)
    assert "idx_messages_deliverable" in "\n".join(r[0] for r in plans["lease"])


def test_ack_ids_are_taken_as_given_whatever_their_characters(fed):
    """The ids of an ack reach the database as they are (PostgreSQL: one array in its text form): an id with a
    comma, quotes, braces or backslashes is one unknown id, never split into others or an error."""
    fed.phase(4)
    mid = messaging.send_message("alice", "bob", "x")
    messaging.receive("bob", lease=600)
    odd = [f"{mid},{mid}", f'"{mid}"', f"{{{mid}}}", f"{mid}\\", "\\", '"', ",", "{}", "NULL", ""]
    assert fed.store().ack_messages("bob", odd, read_at="2026-01-01T00:00:00+00:00") == []
    assert [m["id"] for m in fed.store().ack_messages("bob", odd + [mid], read_at="2026-01-01T00:00:00+00:00")] == [mid]
