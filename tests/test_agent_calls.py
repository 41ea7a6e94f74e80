"""What an agent calls every tick: pulse, paging, read receipts, broadcast (issue 11).

Every test runs on SQLite and PostgreSQL (``fed``); concurrency claims use
real processes.
"""

from __future__ import annotations

import json
import time

import pytest
import structlog

from federation import config, context, core, governance, messaging
from federation.errors import ConflictError, ValidationError

from _procs import WAIT_FOR_GO, drain_script, finish as _finish  # noqa: E402


# ---------------------------------------------------------------------------
# pulse


@pytest.mark.parametrize("phase", [1, 2, 3, 4])
def test_pulse_returns_what_awaits_the_agent(fed, phase):
    """heartbeat, inbox, open polls not yet voted on, session roles, every agent's context."""
    fed.phase(phase)
    context.set_context("carol", "writing the plan")
    voted = governance.create_poll("alice", "Voted?", ["a", "b"])
    governance.vote(voted, "bob", "a")
    closed = governance.create_poll("alice", "Closed?", ["a", "b"])
    governance.close_poll(closed, "alice")
    waiting = governance.create_poll("carol", "Waiting?", ["x", "y"])
    governance.vote(waiting, "alice", "x")
    sid = governance.create_session("alice", "Design review")
    governance.assign_role(sid, "bob", "reviewer", "read section 2")
    governance.create_session("alice", "Not bob's")
    mid = messaging.send_message("alice", "bob", "hello")

    peeked = messaging.pulse("bob", claim=False)
    assert [m["id"] for m in peeked["messages"]] == [mid]
    first = messaging.pulse("bob")
    assert first["agent"] == "bob" and first["phase"] == phase
    assert [m["id"] for m in first["messages"]] == [mid]
    assert [p["id"] for p in first["open_polls"]] == [waiting]
    assert first["open_polls"][0]["tally"] == {"x": 1, "y": 0} and first["more_open_polls"] is False
    assert first["roles"] == [{"session_id": sid, "title": "Design review", "role": "reviewer",
                               "subtask": "read section 2"}]
    states = {a["agent"]: a for a in first["agents"]}
    assert set(states) == set(context.list_agents()) == {"bob", "carol"}
    assert states["carol"]["text"] == "writing the plan" and states["carol"]["last_heartbeat"] is None
    assert states["bob"]["last_heartbeat"] == context.get_context("bob")["last_heartbeat"] is not None
    assert messaging.pulse("bob")["messages"] == []  # claimed once
    assert messaging.peek_inbox("bob") == []


def test_pulse_caps_the_open_polls_and_says_there_are_more(fed):
    """More open polls than one pulse returns: the oldest PULSE_MAX_POLLS, and more_open_polls set."""
    fed.phase(4)
    ids = [governance.create_poll("alice", f"Q{i}?", ["a", "b"]) for i in range(messaging.PULSE_MAX_POLLS + 2)]
    result = messaging.pulse("bob", claim=False)
    assert [p["id"] for p in result["open_polls"]] == ids[:messaging.PULSE_MAX_POLLS]
    assert result["more_open_polls"] is True


@pytest.mark.parametrize("phase,messages,broadcasts", [
    (1, 300, 20), (2, 300, 20), (3, 300, 20), (4, 2000, 100)])
def test_pulse_delivers_every_message_once_under_concurrency(fed, phase, messages, broadcasts, tmp_path):
    """4 processes pulse one agent while messages and broadcasts arrive: each message delivered exactly once.

    Phase 4 runs the full 2,000 messages and 100 broadcasts; phases 1-3 (which
    also write the legacy files) run 300 and 20 to keep the suite fast.
    """
    fed.phase(phase)
    context.set_context("carol", "also listening")  # a second broadcast recipient
    go, done = tmp_path / "go", tmp_path / "done"
    code = drain_script('messaging.pulse("bob")["messages"]')
    procs = [fed.spawn(code, str(go), str(done)) for _ in range(4)]
    time.sleep(0.3)
    go.touch()
    expected = []
    every = max(1, messages // broadcasts)
    for i in range(messages):
        expected.append(messaging.send_message("alice", "bob", f"message {i}"))
        if i % every == 0 and len(expected) - i - 1 < broadcasts:
            ids = messaging.broadcast("alice", f"broadcast {i}")
            assert len(ids) == 2  # bob and carol
            expected.append(ids[0])  # bob's copy (recipients by name)
    done.touch()
    received = [m for out in _finish(procs) for m in json.loads(out.strip().splitlines()[-1])]
    assert len(received) == len(set(received)), "a message was delivered twice"
    assert set(received) == set(expected), "a message was lost"
    assert len(expected) == messages + broadcasts
    assert messaging.peek_inbox("bob") == []
    if phase in (2, 3):  # both sides agree: nothing left unread on either
        assert fed.store().load_inbox("bob") == []
        assert core.tree().inbox("bob").exists() and not list(core.tree().inbox("bob").glob("*.json"))
    assert len(messaging.check_inbox("carol")) == broadcasts


# ---------------------------------------------------------------------------
# paging


@pytest.mark.parametrize("phase", [1, 3, 4])
def test_pages_cover_every_poll_once_in_creation_order(fed, phase):
    """limit/after walk the oldest-first list: concatenated pages equal the whole list."""
    fed.phase(phase)
    ids = [governance.create_poll("alice", f"Q{i}?", ["a", "b"]) for i in range(11)]
    for pid in ids[::3]:
        governance.close_poll(pid, "alice")
    for status in (None, "open", "closed"):
        whole = governance.list_polls(status)
        pages, after = [], None
        while True:
            page = governance.list_polls(status, limit=4, after=after)
            if not page:
                break
            assert len(page) <= 4
            pages += page
            after = page[-1]["id"]
        assert pages == whole
    assert [p["id"] for p in governance.list_polls()] == ids


@pytest.mark.parametrize("phase", [1, 4])
def test_session_pages(fed, phase):
    """list_sessions pages like list_polls, each session in its full shape."""
    fed.phase(phase)
    ids = [governance.create_session("alice", f"S{i}") for i in range(5)]
    governance.assign_role(ids[1], "bob", "dev")
    first = governance.list_sessions(limit=2)
    second = governance.list_sessions(limit=2, after=first[-1]["id"])
    third = governance.list_sessions(limit=2, after=second[-1]["id"])
    assert [s["id"] for s in first + second + third] == ids
    assert first[1]["roles"]["bob"]["role"] == "dev"
    assert governance.list_sessions(limit=2, after=ids[-1]) == []
    assert governance.list_sessions() == first + second + third


@pytest.mark.parametrize("phase", [1, 4])
def test_paging_sees_every_poll_once_while_another_process_creates_polls(fed, phase, tmp_path):
    """Pages read while another process keeps creating polls: no poll twice, none skipped."""
    fed.phase(phase)
    before = [governance.create_poll("alice", f"old {i}?", ["a", "b"]) for i in range(30)]
    go = tmp_path / "go"
    creator = fed.spawn(WAIT_FOR_GO + """
import json
from federation import governance
print(json.dumps([governance.create_poll("carol", f"new {i}?", ["a", "b"]) for i in range(120)]))
""", str(go))
    go.touch()
    seen, after, pages = [], None, 0
    while True:
        finished = creator.poll() is not None  # before the read: a poll created after it is read next time
        page = governance.list_polls(limit=7, after=after)
        pages += 1
        if page:
            seen += [p["id"] for p in page]
            after = page[-1]["id"]
        elif finished:
            break  # the creator was done before this read, and nothing is left after the cursor
        else:
            time.sleep(0.01)
    (out,) = _finish([creator])
    created = json.loads(out.strip().splitlines()[-1])
    assert len(seen) == len(set(seen)), "a poll was returned twice"
    assert seen == before + created, "a poll was skipped or out of order"
    assert pages > 2


# ---------------------------------------------------------------------------
# read receipts


@pytest.mark.parametrize("phase", [2, 3, 4])
def test_sent_messages_carry_read_receipts(fed, phase):
    """get_sent: read_at is None until the recipient claims the message, then the claim time."""
    fed.phase(phase)
    first = messaging.send_message("alice", "bob", "one")
    second = messaging.send_message("alice", "carol", "two")
    messaging.send_message("bob", "alice", "not alice's")
    sent = messaging.get_sent("alice")
    assert [(m["id"], m["read_at"]) for m in sent] == [(first, None), (second, None)]
    assert sent[0]["content"] == "one" and sent[0]["recipient"] == "bob"
    messaging.check_inbox("bob")
    after = {m["id"]: m["read_at"] for m in messaging.get_sent("alice")}
    assert after[first] is not None and after[second] is None
    assert messaging.get_sent("alice", limit=1) == [messaging.get_sent("alice")[-1]]
    assert [m["id"] for m in messaging.get_sent("alice", before=second)] == [first]


def test_phase_1_lists_sent_messages_without_receipts(fed):
    """Phase 1 (files only) keeps no receipts: this process's sent messages, read_at always None."""
    fed.phase(1)
    mid = messaging.send_message("alice", "bob", "one")
    messaging.check_inbox("bob")
    assert [(m["id"], m["read_at"]) for m in messaging.get_sent("alice")] == [(mid, None)]


@pytest.mark.parametrize("phase", [1, 4])
def test_history_pages_backwards_with_a_cursor(fed, phase):
    """get_history(before=cursor) returns the entries just older than the cursor's entry."""
    fed.phase(phase)
    for i in range(5):
        messaging.send_message("alice", "bob", f"m{i}")
    messaging.check_inbox("bob")
    whole = messaging.get_history("bob", 100)
    newest = messaging.get_history("bob", 4)
    older = messaging.get_history("bob", 100, before=messaging.history_cursor(newest[0]))
    assert older + newest == whole
    assert messaging.get_history("bob", 100, before=messaging.history_cursor(whole[0])) == []


# ---------------------------------------------------------------------------
# broadcast


@pytest.mark.parametrize("phase", [1, 2, 3, 4])
def test_broadcast_reaches_every_known_agent_but_the_sender_once(fed, phase):
    """One copy per known agent except the sender; with a role, only that role; each claimed once."""
    fed.phase(phase)
    context.set_context("alice", "lead")
    context.set_profile("bob", default_role="reviewer")
    context.set_expertise("carol", ["sql"])
    context.set_profile("dave", default_role="reviewer")
    ids = messaging.broadcast("alice", "stand-up in 5", "info")
    assert len(ids) == 3
    for agent, mid in zip(["bob", "carol", "dave"], ids):
        (message,) = messaging.check_inbox(agent)
        assert (message["id"], message["sender"], message["content"], message["message_type"]) == (
            mid, "alice", "stand-up in 5", "info")
        assert messaging.check_inbox(agent) == []
    assert messaging.check_inbox("alice") == []
    to_reviewers = messaging.broadcast("bob", "please review", role="reviewer")
    assert len(to_reviewers) == 1 and messaging.check_inbox("dave")[0]["id"] == to_reviewers[0]
    assert messaging.check_inbox("carol") == []


@pytest.mark.parametrize("phase", [1, 4])
def test_broadcast_to_a_role_nobody_has_sends_nothing(fed, phase):
    """A role no one has: an empty list, not an error, and nothing written."""
    fed.phase(phase)
    context.set_profile("bob", default_role="reviewer")
    assert messaging.broadcast("alice", "hello", role="astronaut") == []
    assert messaging.peek_inbox("bob") == [] and context.list_agents() == ["bob"]


# ---------------------------------------------------------------------------
# bad input: a clear error, nothing written


BAD_LIMITS = [0, -1, 10_001, 1.5, "10", True, None]


@pytest.mark.parametrize("limit", BAD_LIMITS)
def test_bad_limits_are_validation_errors(fed, limit):
    """limit 0, negative, over the maximum, not a whole number: ValidationError naming the range."""
    fed.phase(4)
    governance.create_poll("alice", "Q?", ["a", "b"])
    calls = [lambda: messaging.get_history("bob", limit), lambda: messaging.get_sent("bob", limit)]
    if limit is not None:  # None means "no limit" for the list calls
        calls += [lambda: governance.list_polls(limit=limit), lambda: governance.list_sessions(limit=limit)]
    for call in calls:
        with pytest.raises(ValidationError, match="limit must be a whole number from 1 to"):
            call()


@pytest.mark.parametrize("phase", [1, 2, 3, 4])
def test_unknown_cursors_are_validation_errors(fed, phase):
    """An after/before naming no record (or malformed) is a ValidationError, never a silent empty page."""
    fed.phase(phase)
    pid = governance.create_poll("alice", "Q?", ["a", "b"])
    sid = governance.create_session("alice", "S")
    cases = [
        (lambda: governance.list_polls(after="nosuchpoll"), "not the id of a poll"),
        (lambda: governance.list_polls(after=sid), "not the id of a poll"),
        (lambda: governance.list_sessions(after=pid), "not the id of a session"),
        (lambda: governance.list_polls(after="../x"), "not a valid id"),
        (lambda: governance.list_polls(after=5), "must be a string"),
        (lambda: messaging.get_history("bob", before="sent:nosuchmessage"), "not an entry"),
        (lambda: messaging.get_history("bob", before="nocolon"), "history cursor"),
        (lambda: messaging.get_history("bob", before="later:abc"), "direction"),
        (lambda: messaging.get_sent("bob", before="nosuchmessage"), "not the id of a message"),
    ]
    for call, expected in cases:
        with pytest.raises(ValidationError, match=expected):
            call()
    assert governance.list_polls(after=pid) == []


@pytest.mark.parametrize("phase", [1, 4])
def test_bad_broadcasts_and_pulses_write_nothing(fed, phase):
    """Oversized content, a bad sender or role, a non-boolean claim: ValidationError, no message, no heartbeat."""
    fed.phase(phase)
    context.set_profile("bob", default_role="reviewer")
    with pytest.raises(ValidationError, match="the limit is 65536 bytes"):
        messaging.broadcast("alice", "x" * (64 * 1024 + 1))
    with pytest.raises(ValidationError, match="not a valid agent name"):
        messaging.broadcast("../alice", "hi")
    with pytest.raises(ValidationError, match="role must not be empty"):
        messaging.broadcast("alice", "hi", role=" ")
    with pytest.raises(ValidationError, match="claim must be true or false"):
        messaging.pulse("bob", claim="yes")
    with pytest.raises(ValidationError, match="not a valid agent name"):
        messaging.pulse("bad/name")
    assert messaging.peek_inbox("bob") == []
    assert context.get_context("bob") is None  # no heartbeat written
    assert context.list_agents() == ["bob"]


def test_a_vote_refused_by_the_single_statement_names_its_reason(fed):
    """The one-statement vote looks up why only when refused: closed, unknown option, unknown poll."""
    fed.phase(4)
    pid = governance.create_poll("alice", "Q?", ["a", "b"])
    governance.vote(pid, "bob", "a")
    governance.vote(pid, "bob", "b")  # a re-vote replaces
    with pytest.raises(ValidationError, match="not an option"):
        governance.vote(pid, "carol", "c")
    governance.close_poll(pid, "alice")
    with pytest.raises(ConflictError, match="closed"):
        governance.vote(pid, "carol", "a")
    assert governance.get_poll(pid)["votes"] == {"bob": "b"}


# ---------------------------------------------------------------------------
# through the shim


@pytest.mark.parametrize("phase", [2, 3])
def test_new_reads_are_compared_and_a_difference_is_published(fed, phase):
    """In phases 2-3 the new reads run on both sides: agreement is silent, a difference is a shadow_mismatch."""
    fed.phase(phase)
    pid = governance.create_poll("alice", "Q?", ["a", "b"])
    sid = governance.create_session("alice", "S")
    governance.assign_role(sid, "bob", "dev")
    context.set_profile("bob", default_role="dev")
    with structlog.testing.capture_logs() as logs:
        messaging.pulse("bob")
        governance.list_polls("open", limit=5)
        governance.list_sessions(limit=5)
        messaging.broadcast("alice", "hi", role="dev")
    assert [e for e in logs if e["event"] in ("shadow_mismatch", "shadow_error")] == []
    # the database alone gains a vote: the next pulse and page see the difference
    fed.store().save_vote(pid, "bob", "a", "2026-01-01T00:00:00+00:00")
    with structlog.testing.capture_logs() as logs:
        messaging.pulse("bob", claim=False)
        governance.list_polls(limit=5)
    mismatches = [e for e in logs if e["event"] == "shadow_mismatch"]
    assert {e["op"] for e in mismatches} == {"load_open_polls", "load_polls_page"}
    assert all(e["key"] == pid for e in mismatches)


@pytest.mark.parametrize("phase", [2, 3])
def test_everyones_heartbeat_is_compared_by_get_context_not_by_every_pulse(fed, phase):
    """pulse's list of agents compares who is known (heartbeats move every tick under no common lock);
    a context that differs is still published, by get_context."""
    fed.phase(phase)
    context.set_context("bob", "here")
    fed.store().save_heartbeat("bob", "2000-01-01T00:00:00+00:00")  # the database alone
    with structlog.testing.capture_logs() as logs:
        messaging.pulse("carol", claim=False)
    assert [e for e in logs if e["event"] == "shadow_mismatch"] == []
    with structlog.testing.capture_logs() as logs:
        context.get_context("bob")
    (mismatch,) = [e for e in logs if e["event"] == "shadow_mismatch"]
    assert mismatch["op"] == "load_context" and mismatch["diff"][0]["field"] == "last_heartbeat"


def test_phase_4_per_tick_calls_write_no_files(fed):
    """pulse, broadcast, pages and receipts in phase 4 leave the legacy tree untouched."""
    fed.phase(4)
    context.set_profile("bob", default_role="dev")
    governance.create_poll("alice", "Q?", ["a", "b"])
    messaging.broadcast("alice", "hi")
    messaging.pulse("bob")
    governance.list_polls("open", limit=5)
    governance.list_sessions(limit=5)
    messaging.get_sent("alice")
    assert not (fed.root / "nodes").exists() and not (fed.root / "shared").exists()


@pytest.mark.sqlite_only
def test_per_tick_reads_use_an_index(fed):
    """EXPLAIN QUERY PLAN: the per-tick reads search an index, never scan a whole table."""
    fed.phase(4)
    governance.create_poll("alice", "Q?", ["a", "b"])
    db = fed.store().db
    queries = {
        "open polls": ("SELECT id FROM polls WHERE status = 'open' ORDER BY created_at, id LIMIT 5", ()),
        "pulse polls": ("SELECT id FROM polls p WHERE status = 'open' AND NOT EXISTS (SELECT 1 FROM votes v "
                        "WHERE v.poll_id = p.id AND v.voter = ?) ORDER BY created_at, id LIMIT 5", ("bob",)),
        "sent": ("SELECT id FROM messages WHERE sender = ? ORDER BY timestamp DESC, id DESC LIMIT 5", ("bob",)),
        "received": ("SELECT id FROM messages WHERE recipient = ? AND read_at IS NOT NULL "
                     "ORDER BY read_at DESC, timestamp DESC, id DESC LIMIT 5", ("bob",)),
        "history": ("SELECT id FROM message_history WHERE sender = ? ORDER BY timestamp DESC, id DESC LIMIT 5",
                    ("bob",)),
        "roles": ("SELECT session_id FROM session_roles WHERE agent = ?", ("bob",)),
        "role holders": ("SELECT agent FROM profiles WHERE default_role = ?", ("dev",)),
    }
    for name, (sql, params) in queries.items():
        plan = " | ".join(r[-1] for r in db.fetchall("EXPLAIN QUERY PLAN " + sql, params))
        assert "USING" in plan and "INDEX" in plan, (name, plan)
        assert "SCAN polls" not in plan and "SCAN messages" not in plan and "TEMP B-TREE" not in plan, (name, plan)


def test_an_older_database_is_upgraded_with_the_new_indexes(fed):
    """A database at schema version 1 gains version 2 (the indexes) on first use, its rows kept."""
    from federation.stores import schema
    from federation.stores.database import get_db
    from federation.stores.sqlstore import forget_stores

    fed.phase(4)
    pid = governance.create_poll("alice", "Q?", ["a", "b"])
    db = get_db(config.settings())
    db.write(lambda tx: [tx.execute(f"DROP INDEX IF EXISTS {name}") for name in (
        "idx_polls_created", "idx_polls_status_created", "idx_messages_sender_time")])
    db.execute("DELETE FROM schema_version WHERE version > 1")
    forget_stores()
    assert [p["id"] for p in governance.list_polls("open", limit=5)] == [pid]
    assert [r[0] for r in get_db(config.settings()).fetchall("SELECT version FROM schema_version ORDER BY version")] == [
        v for v, _ in schema.MIGRATIONS]


# ---------------------------------------------------------------------------
# PostgreSQL: one round trip for a vote and a claim, same guarantees


@pytest.mark.postgresql_only
def test_a_vote_waiting_on_a_close_in_flight_is_refused_once_it_commits(fed):
    """The vote statement locks the poll FOR SHARE: behind an uncommitted close it waits, then sees it closed."""
    import threading

    import psycopg

    fed.phase(4)
    pid = governance.create_poll("alice", "Q?", ["a", "b"])
    closer = psycopg.connect(fed.db_url)  # another agent's close, not yet committed
    closer.execute("SELECT 1 FROM polls WHERE id = %s FOR UPDATE", (pid,))
    closer.execute("UPDATE polls SET status = 'closed' WHERE id = %s", (pid,))
    outcome: list = []

    def vote() -> None:
        try:
            governance.vote(pid, "bob", "a")
            outcome.append("landed")
        except ConflictError as exc:
            outcome.append(str(exc))

    t = threading.Thread(target=vote)
    t.start()
    time.sleep(0.5)
    assert t.is_alive(), "the vote did not wait for the close holding the poll"
    closer.commit()
    closer.close()
    t.join(30)
    assert outcome and "closed" in outcome[0]
    assert governance.get_poll(pid)["votes"] == {}


@pytest.mark.postgresql_only
def test_a_claim_after_the_server_ended_the_idle_session_is_delivered(fed):
    """The server ended this process's idle session: the one-statement claim notices before sending, and delivers."""
    import psycopg

    fed.phase(4)
    messaging.send_message("alice", "bob", "first")
    assert len(messaging.check_inbox("bob")) == 1
    mid = messaging.send_message("alice", "bob", "second")
    with psycopg.connect(fed.db_url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                      "WHERE datname = current_database() AND pid <> pg_backend_pid()")
    time.sleep(0.2)  # the termination notice reaches our socket
    assert [m["id"] for m in messaging.check_inbox("bob")] == [mid]
