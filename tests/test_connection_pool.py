"""A process's database connections are pooled and shared by its threads (issue 30): however many threads
serve calls (an HTTP server's worker pool runs up to a hundred), at most ``FEDERATION_DB_CONNECTIONS`` stay
open between transactions.  A connection per thread kept each thread's page cache and statements alive, and
the server's memory grew with its threads."""

from __future__ import annotations

import os
import threading

import pytest

from federation import config, context, messaging
from federation.errors import ConfigError
from federation.stores.database import Database, SqliteDialect

THREADS = 32


def _wal_descriptors(path) -> int:
    """Descriptors of this process open on the SQLite file's WAL (one per open connection; the database file's
    own descriptor of a closed connection may stay open, for SQLite to reuse, while the process holds locks)."""
    names = {str(path) + "-wal"}
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") in names:
                count += 1
        except OSError:
            pass
    return count


def test_many_threads_keep_a_bounded_pool_of_connections(fed):
    """32 threads each send, read and set a context (phase 4), then stay alive together: the process holds at
    most the pool's connections (it held one per live thread: 32), and everything they wrote is there."""
    fed.phase(4)
    messaging.send_message("alice", "bob", "first")  # the schema, made before the threads start
    db = fed.store().db
    ready, release = threading.Barrier(THREADS + 1), threading.Barrier(THREADS + 1)
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for k in range(10):
                messaging.send_message(f"agent-{i}", "bob", f"{i}/{k}")
                messaging.peek_inbox(f"agent-{i}")
                context.set_context(f"agent-{i}", f"at {k}")
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)
        ready.wait(60)  # every thread alive, its calls done
        release.wait(60)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(THREADS)]
    for t in threads:
        t.start()
    ready.wait(60)
    try:
        held = db.connections()
        descriptors = _wal_descriptors(fed.db_path) if not fed.db_url else None
    finally:
        release.wait(60)
        for t in threads:
            t.join(60)
    assert not errors, errors[:3]
    assert held["open"] <= db.pool_size < THREADS, held
    assert held["idle"] == held["open"]  # nothing borrowed once the calls returned
    if descriptors is not None:  # a WAL descriptor per connection, and the pulse watcher's
        assert descriptors <= db.pool_size + 1, descriptors
    assert len(messaging.peek_inbox("bob")) == 1 + THREADS * 10


def test_one_kept_connection_serves_eight_writing_threads(tmp_path):
    """With a pool of one, eight threads write at once, nested transactions included: every write lands (a
    thread waits a moment for the kept connection, or opens one more), and one stays open afterwards."""
    db = Database(SqliteDialect(tmp_path / "f.db"), pool_size=1)
    db.execute("CREATE TABLE t (x INTEGER)")
    errors: list[BaseException] = []

    def work(base: int) -> None:
        try:
            for i in range(40):
                db.write(lambda tx, v=base + i: (tx.execute("INSERT INTO t VALUES (?)", (v,)),
                                                 db.read(lambda tx2: tx2.fetchone("SELECT COUNT(*) FROM t"))))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k * 1000,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors[:3]
    assert db.fetchall("SELECT COUNT(*) FROM t") == [(320,)]
    assert db.connections()["open"] == 1


def test_a_pinned_thread_keeps_its_connection_and_its_settings(tmp_path):
    """A bulk load's connection setting (no automatic checkpoint) holds for every statement of the block, and is
    put back after: the block runs on one connection."""
    db = Database(SqliteDialect(tmp_path / "f.db"), pool_size=4)
    db.execute("CREATE TABLE t (x INTEGER)")
    with db.dialect.bulk_load(db):
        seen = {db.fetchone("PRAGMA wal_autocheckpoint")[0] for _ in range(5)}
        db.execute("INSERT INTO t VALUES (1)")
        assert db.connections()["open"] - db.connections()["idle"] == 1  # this thread's, kept
    assert seen == {0}
    assert db.fetchone("PRAGMA wal_autocheckpoint")[0] == 1000
    assert db.connections()["idle"] == db.connections()["open"]


def test_the_pool_size_is_configured_and_checked(monkeypatch, tmp_path):
    monkeypatch.setenv("FEDERATION_DB_CONNECTIONS", "3")
    assert Database(SqliteDialect(tmp_path / "f.db")).pool_size == 3
    monkeypatch.delenv("FEDERATION_DB_CONNECTIONS")
    assert config.db_connections() == config.DEFAULT_DB_CONNECTIONS
    for bad in ("0", "-1", "lots", "100000"):
        monkeypatch.setenv("FEDERATION_DB_CONNECTIONS", bad)
        with pytest.raises(ConfigError, match="FEDERATION_DB_CONNECTIONS"):
            config.db_connections()


def test_a_forked_child_starts_an_empty_pool_and_leaves_the_parents_alone(fed):
    """A borrow and a give-back take no lock and ask no pid (issue 28's per-call cost): a forked child forgets
    its parent's connections at the fork (``os.register_at_fork``) instead.  The child, forked while its
    thread holds a pinned connection, starts with none open, writes through connections of its own, and the
    parent's connections (kept and pinned) still serve it after."""
    from federation.stores.database import get_db

    db = get_db(config.settings())
    messaging.send_message("alice", "bob", "before the fork")
    with db.pinned():
        context.set_context("alice", "parent, pinned")
        parent_conn = db._local.conn
        read, write = os.pipe()
        child = os.fork()
        if child == 0:  # pragma: no cover - runs in the child
            code = 1
            try:
                os.close(read)
                fresh = db.connections()["open"] == 0 and db._local.conn is None
                messaging.send_message("carol", "bob", "from the child")
                context.set_context("carol", "child")
                os.write(write, b"ok" if fresh and db._local.conn is None else b"reused")
                code = 0
            finally:
                os._exit(code)
        os.close(write)
        _, status = os.waitpid(child, 0)
        said = os.read(read, 16)
        os.close(read)
        assert os.waitstatus_to_exitcode(status) == 0 and said == b"ok"
        assert db._local.conn is parent_conn  # still pinned in the parent, and still working
        assert context.get_context("carol")["text"] == "child"
    texts = sorted(m["content"] for m in messaging.check_inbox("bob"))
    assert texts == ["before the fork", "from the child"]


def test_each_pooled_connection_has_a_small_page_cache_and_a_bulk_load_the_default(tmp_path):
    """Every SQLite connection of the pool keeps a page cache of CACHE_KIB (SQLite's default, 2,000 KiB per
    connection, filled as the database grew: 8 x 2 MB held by a server for good, issue 30); a bulk load's block
    has SQLite's default, and its connection goes back to the pool with the small one."""
    from federation.stores import sqlite as _sqlite

    db = Database(SqliteDialect(tmp_path / "f.db"), pool_size=4)
    seen: set[int] = set()

    def read() -> None:
        seen.add(db.fetchone("PRAGMA cache_size")[0])

    threads = [threading.Thread(target=read) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert seen == {-_sqlite.CACHE_KIB} and _sqlite.CACHE_KIB < 2000
    with db.dialect.bulk_load(db):
        assert db.fetchone("PRAGMA cache_size")[0] == -_sqlite.BULK_CACHE_KIB
    assert {db.fetchone("PRAGMA cache_size")[0] for _ in range(4)} == {-_sqlite.CACHE_KIB}
