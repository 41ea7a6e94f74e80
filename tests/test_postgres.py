"""What only the PostgreSQL backend has: its dialect, retries, and a server that goes away."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from typing import Callable

import pytest

from federation import config, governance
from federation.stores import database
from federation.stores.database import dialect_for, get_db
from federation.errors import ConfigError, StorageError
from federation.stores.sqlstore import forget_stores

psycopg = pytest.importorskip(
    "psycopg", reason="PostgreSQL cases not run: psycopg is not installed (pip install -e '.[postgresql]')")

from federation.stores.postgres import PostgresDialect  # noqa: E402


def test_placeholders_translated_outside_quotes():
    """``?`` becomes ``%s`` and ``%`` is doubled, but text inside quotes is left alone."""
    d = PostgresDialect("postgresql://u@h/db")
    assert d.sql("SELECT a FROM t WHERE b = ? AND c LIKE 'x%?' AND \"we?ird\" = ?") == (
        "SELECT a FROM t WHERE b = %s AND c LIKE 'x%?' AND \"we?ird\" = %s")
    assert d.sql("SELECT 100 % ?") == "SELECT 100 %% %s"
    assert d.sql("SELECT 'it''s ?', ?") == "SELECT 'it''s ?', %s"


def test_password_never_in_descriptions():
    """Error messages name the database without its password."""
    d = PostgresDialect("postgresql://fed:s3cret@db.example:5432/federation")
    assert "s3cret" not in d.describe() and "db.example" in d.describe()


def test_missing_driver_is_a_clear_error(monkeypatch):
    """FEDERATION_DB_URL without psycopg installed says what to install."""
    monkeypatch.setitem(sys.modules, "psycopg", None)
    monkeypatch.delitem(sys.modules, "federation.stores.postgres", raising=False)
    with config.override(FEDERATION_DB_URL="postgresql://u@h/db") as s:
        with pytest.raises(ConfigError, match=r"federation\[postgresql\]"):
            dialect_for(s)


@pytest.mark.postgresql_only
def test_snapshot_unit_reruns_when_a_row_changes(fed):
    """A read-modify-write unit whose rows another connection changed is retried, not applied stale."""
    pid = governance.create_poll("alice", "Q?", ["a", "b"])
    db = get_db(config.settings())
    attempts = []

    def unit(tx):
        status = tx.fetchone("SELECT status FROM polls WHERE id = ?", (pid,))[0]
        attempts.append(status)
        if len(attempts) == 1:  # another agent closes the poll after this unit read it
            with psycopg.connect(fed.db_url, autocommit=True) as other:
                other.execute("UPDATE polls SET status = 'closed' WHERE id = %s", (pid,))
        tx.execute("UPDATE polls SET question = ? WHERE id = ?", (f"seen {status}", pid))

    db.write(unit, snapshot=True)
    assert attempts == ["open", "closed"]
    assert governance.get_poll(pid)["question"] == "seen closed"


@pytest.mark.postgresql_only
def test_close_waits_for_votes_in_flight(fed):
    """A close blocks on a vote that holds the poll FOR SHARE; the vote lands before the close."""
    pid = governance.create_poll("alice", "Q?", ["a", "b"])
    holder = psycopg.connect(fed.db_url)
    holder.execute("SELECT status FROM polls WHERE id = %s FOR SHARE", (pid,))
    holder.execute("INSERT INTO votes (poll_id, voter, option) VALUES (%s, 'bob', 'a')", (pid,))
    closed = threading.Event()
    t = threading.Thread(target=lambda: (governance.close_poll(pid, "alice"), closed.set()))
    t.start()
    time.sleep(0.5)
    assert not closed.is_set(), "the close did not wait for the vote holding the poll"
    holder.commit()
    holder.close()
    t.join(30)
    poll = governance.get_poll(pid)
    assert poll["status"] == "closed" and poll["votes"] == {"bob": "a"}


@pytest.mark.postgresql_only
def test_row_lock_held_past_the_deadline_is_a_storage_error(fed, monkeypatch):
    """A poll locked by another session for too long: the vote gives up with "busy", never hangs."""
    pid = governance.create_poll("alice", "Q?", ["a", "b"])
    monkeypatch.setattr(database, "BUSY_DEADLINE_S", 1.0)
    forget_stores()  # new connections take the shorter deadline
    holder = psycopg.connect(fed.db_url)
    holder.execute("SELECT 1 FROM polls WHERE id = %s FOR UPDATE", (pid,))
    try:
        t0 = time.monotonic()
        with pytest.raises(StorageError, match="stayed busy"):
            governance.vote(pid, "bob", "a")
        assert time.monotonic() - t0 < 10
    finally:
        holder.rollback()
        holder.close()
    governance.vote(pid, "bob", "a")
    assert governance.get_poll(pid)["votes"] == {"bob": "a"}


@pytest.mark.postgresql_only
def test_claim_waits_for_a_concurrent_claim_and_gets_nothing_twice(fed):
    """Under READ COMMITTED a claim blocked by another claimer re-checks read_at: no message twice."""
    from federation import messaging

    fed.phase(4)
    ids = {messaging.send_message("alice", "bob", f"m{i}") for i in range(3)}
    other = psycopg.connect(fed.db_url)  # another agent's claim, still uncommitted
    taken = {r[0] for r in other.execute(
        "UPDATE messages SET read_at = 'x' WHERE recipient = 'bob' AND read_at IS NULL RETURNING id")}
    result: list = []
    t = threading.Thread(target=lambda: result.append(messaging.check_inbox("bob")))
    t.start()
    time.sleep(0.5)
    assert t.is_alive(), "the second claim did not wait for the first"
    messaging.send_message("alice", "bob", "late")  # sent while the second claim waits
    other.commit()
    other.close()
    t.join(30)
    assert taken == ids
    assert result == [[]]  # none of the first claim's messages; "late" came after its snapshot
    assert [m["content"] for m in messaging.check_inbox("bob")] == ["late"]  # skipped by none


AGENT = """
import json, sys
from federation import governance
from federation.stores import database
from federation.errors import FederationError
database.BUSY_DEADLINE_S = float(sys.argv[2])
for line in sys.stdin:
    try:
        governance.vote(sys.argv[1], line.strip(), "yes")
        print(json.dumps({"ok": True}), flush=True)
    except FederationError as exc:
        print(json.dumps({"ok": False, "error": type(exc).__name__, "message": str(exc)}), flush=True)
"""


class Agent:
    """One long-running agent process that votes when told to."""

    def __init__(self, fed, poll_id: str, deadline_s: float):
        self.poll_id = poll_id
        self.proc = subprocess.Popen([sys.executable, "-c", AGENT, poll_id, str(deadline_s)],
                                     env=fed.subprocess_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)

    def vote(self, voter: str) -> dict:
        self.proc.stdin.write(voter + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, self.proc.stderr.read()[-3000:]
        return json.loads(line)

    def close(self) -> None:
        self.proc.stdin.close()
        assert self.proc.wait(30) == 0, self.proc.stderr.read()[-3000:]


@pytest.fixture
def agent_on_private_server(fed, pg_server):
    """start(deadline_s) -> a voting Agent on a poll of a private server the test may stop."""
    fed.env["FEDERATION_DB_URL"] = pg_server.url
    fed.apply()
    poll_id = governance.create_poll("alice", "Still there?", ["yes", "no"])
    agents: list[Agent] = []

    def start(deadline_s: float) -> Agent:
        agents.append(Agent(fed, poll_id, deadline_s))
        return agents[-1]

    yield start
    for agent in agents:
        agent.close()


@pytest.mark.postgresql_only
def test_server_goes_away_and_comes_back(pg_server, agent_on_private_server):
    """Server stopped: the caller gets a clear StorageError; server back: the same process carries on."""
    agent = agent_on_private_server(deadline_s=3)
    assert agent.vote("before") == {"ok": True}
    pg_server.stop("fast")
    t0 = time.monotonic()
    outcome = agent.vote("during")
    assert outcome["ok"] is False and outcome["error"] == "StorageError", outcome
    assert "unreachable" in outcome["message"] and "127.0.0.1" in outcome["message"], outcome
    assert time.monotonic() - t0 < 30
    pg_server.start()
    assert agent.vote("after") == {"ok": True}  # the same agent process, not restarted
    assert agent.vote("during") == {"ok": True}
    assert sorted(governance.get_poll(agent.poll_id)["votes"]) == ["after", "before", "during"]


@pytest.mark.postgresql_only
def test_short_outage_is_invisible(pg_server, agent_on_private_server):
    """A restart shorter than the retry deadline: the call waits and succeeds."""
    agent = agent_on_private_server(deadline_s=30)
    assert agent.vote("before") == {"ok": True}
    pg_server.stop("fast")
    restarter = threading.Timer(1.0, pg_server.start)
    restarter.start()
    t0 = time.monotonic()
    assert agent.vote("during") == {"ok": True}
    assert time.monotonic() - t0 >= 0.5  # it did wait for the server
    restarter.join()
    assert sorted(governance.get_poll(agent.poll_id)["votes"]) == ["before", "during"]


def test_reconnects_in_process(fed):
    """This process's own connection killed by the server: the next operation reconnects."""
    pid = governance.create_poll("alice", "Q?", ["a", "b"])
    governance.vote(pid, "bob", "a")
    if fed.engine == "postgresql":
        with psycopg.connect(fed.db_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE datname = current_database() AND pid <> pg_backend_pid()")
    else:
        get_db(config.settings()).close()
    governance.vote(pid, "carol", "b")
    assert governance.get_poll(pid)["tally"] == {"a": 1, "b": 1}


@pytest.mark.postgresql_only
def test_forked_child_leaves_the_parents_session_alone(fed):
    """A forked child that forgets its inherited connections does not end the parent's session."""
    governance.create_poll("alice", "Q?", ["a", "b"])
    before = get_db(config.settings()).fetchone("SELECT pg_backend_pid()")
    child = os.fork()
    if child == 0:
        try:
            forget_stores()
        finally:
            os._exit(0)
    os.waitpid(child, 0)
    assert get_db(config.settings()).fetchone("SELECT pg_backend_pid()") == before


def _listen_sessions(url: str) -> int:
    """Sessions of the test's database whose last statement was the waiters' LISTEN."""
    with psycopg.connect(url, autocommit=True) as admin:
        return admin.execute("SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database() "
                             "AND query LIKE 'LISTEN %'").fetchone()[0]


@pytest.mark.postgresql_only
def test_waiting_threads_share_one_listen_connection(fed):
    """16 threads waiting in pulse(wait) at once (and 16 more later, on new threads) hold one LISTEN session
    between them, not one each (issue 30: descriptors O(1) per process); each wakes on its own send, not on
    another agent's; once that session is killed, the waits go on (looking every 0.25 s) and the next ones
    share a new one."""
    from federation import messaging
    from federation.stores import postgres

    fed.phase(4)
    messaging.send_message("alice", "nobody", "the schema first")
    url = config.settings().db_url

    def wait_all(names: list[str]) -> dict[str, list]:
        got: dict[str, list] = {}
        errors: list[BaseException] = []

        def wait(name: str) -> None:
            try:
                got[name] = [m["content"] for m in messaging.pulse(name, lease=30, wait=30)["messages"]]
            except BaseException as exc:  # noqa: BLE001 - reported by the test
                errors.append(exc)

        threads = [threading.Thread(target=wait, args=(n,)) for n in names]
        for t in threads:
            t.start()
        listener = postgres._listeners[(url, os.getpid())] if (url, os.getpid()) in postgres._listeners else None
        deadline = time.monotonic() + 25  # within the waits' 30 s, on a loaded machine
        while listener is None or len(listener.watchers) < len(names):  # every thread waiting
            assert time.monotonic() < deadline, f"the threads did not all wait within 25 s: {errors[:2]}"
            time.sleep(0.05)
            listener = postgres._listeners.get((url, os.getpid()))
        sessions = _listen_sessions(url)
        for n in names:
            messaging.send_message("alice", n, f"for {n}")
        for t in threads:
            t.join(40)
        assert not errors, errors[:3]
        assert sessions == 1, f"{sessions} LISTEN sessions for {len(names)} waiting threads"
        return got

    first = [f"r{i}" for i in range(16)]
    assert wait_all(first) == {n: [f"for {n}"] for n in first}
    second = [f"s{i}" for i in range(16)]
    assert wait_all(second) == {n: [f"for {n}"] for n in second}
    assert _listen_sessions(url) == 1

    watcher = postgres.PostgresWatcher(url, "x")
    messaging.send_message("alice", "y", "not for x")
    assert watcher.changed(0.5) is False
    messaging.send_message("alice", "x", "for x")
    assert watcher.changed(10) is True and watcher.changed(0.2) is False

    with psycopg.connect(url, autocommit=True) as admin:  # the session lost: its waiter is told
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() "
                      "AND query LIKE 'LISTEN %'")
    with pytest.raises(StorageError, match="LISTEN"):
        watcher.changed(10)
    third = [f"t{i}" for i in range(4)]
    assert wait_all(third) == {n: [f"for {n}"] for n in third}


def _woken_by_a_send(url: str, agent: str, while_waiting: Callable[[], None] = lambda: None) -> list[str]:
    """A thread waits in pulse(wait) for *agent*; once its LISTEN session is open (and *while_waiting* ran),
    a message is sent: what the wait returned."""
    from federation import messaging

    got: list = []
    waiter = threading.Thread(target=lambda: got.extend(messaging.pulse(agent, lease=30, wait=30)["messages"]))
    waiter.start()
    deadline = time.monotonic() + 20
    while not _listen_sessions(url):
        assert time.monotonic() < deadline, "the wait opened no LISTEN session"
        time.sleep(0.05)
    while_waiting()
    messaging.send_message("alice", agent, "wake up")
    waiter.join(30)
    return [m["content"] for m in got]


@pytest.mark.postgresql_only
def test_the_listen_connection_is_closed_once_nobody_waits(fed, monkeypatch):
    """Once no thread has waited on it for LISTEN_IDLE_S, the process's LISTEN session is closed (each
    database a process ever waited on kept one for the process's life: a test run's filled the server's
    max_connections); the next wait opens one again and is woken as before."""
    from federation import messaging
    from federation.stores import postgres

    monkeypatch.setattr(postgres, "LISTEN_IDLE_S", 0.5)
    fed.phase(4)
    messaging.send_message("alice", "nobody", "the schema first")
    url = config.settings().db_url
    assert messaging.pulse("bob", lease=30, wait=0.3)["messages"] == []  # waited, nothing came
    assert _listen_sessions(url) == 1
    deadline = time.monotonic() + 20
    while _listen_sessions(url):
        assert time.monotonic() < deadline, "the idle LISTEN session was not closed"
        time.sleep(0.2)
    assert _woken_by_a_send(url, "bob") == ["wake up"]  # the next wait opens a session again


@pytest.mark.postgresql_only
def test_a_wait_works_when_the_process_holds_descriptors_past_1024(fed):
    """``select()`` refuses a descriptor numbered 1024 or more: a server holding that many files and sockets
    had its LISTEN reader die at once (every wait fell back to looking every 0.25 s, and every idle pooled
    connection was judged stale).  With 1,100 descriptors open first, a wait is woken by the notification on
    a LISTEN session numbered past 1024."""
    import resource

    from federation import messaging

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2048:
        pytest.skip(f"the open-file limit's hard value is {hard}: 1,100 more descriptors cannot be opened")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 2048), hard))
    fds = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        fed.phase(4)
        messaging.send_message("alice", "nobody", "the schema first")
        url = config.settings().db_url

        def reader_alive() -> None:
            time.sleep(0.3)  # the reader is polling its socket
            assert _listen_sessions(url) == 1  # still there: its reader did not fail

        assert _woken_by_a_send(url, "bob", while_waiting=reader_alive) == ["wake up"]
    finally:
        for fd in fds:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
