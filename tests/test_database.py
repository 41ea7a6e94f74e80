"""The database layer: schema versions, WAL, the network-filesystem refusal, busy handling."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest

from federation.stores import database, schema
from federation import governance
from federation.stores.database import Database, SqliteDialect, network_fs_type
from federation.errors import StorageError


def test_schema_created_on_first_use_with_version(fed):
    """The first operation creates every table of the plan and records each schema version once."""
    fed.phase(4)
    governance.create_poll("alice", "q?", ["a", "b"])
    db = fed.store().db
    assert db.fetchall("SELECT version FROM schema_version ORDER BY version") == [
        (version,) for version, _ in schema.MIGRATIONS]
    assert set(fed.store().counts()) == set(schema.TABLES)


@pytest.mark.sqlite_only
def test_sqlite_runs_in_wal_mode(fed):
    """SQLite is opened in WAL mode with NORMAL synchronisation."""
    fed.phase(4)
    governance.create_poll("alice", "q?", ["a", "b"])
    conn = sqlite3.connect(fed.db_path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_newer_schema_is_refused(tmp_path):
    """A database from a newer federation version is refused, not silently used."""
    path = tmp_path / "f.db"
    conn = sqlite3.connect(path)
    conn.execute(schema.SCHEMA_VERSION_DDL)
    conn.execute("INSERT INTO schema_version VALUES (?, 'later')", (schema.LATEST + 1,))
    conn.commit()
    conn.close()
    from federation.errors import ConfigError

    with pytest.raises(ConfigError, match="newer than this federation"):
        Database(SqliteDialect(path)).fetchall("SELECT 1")


def _mounts(tmp_path: Path, lines: list[str]) -> str:
    f = tmp_path / "mounts"
    f.write_text("\n".join(lines) + "\n")
    return str(f)


def test_network_filesystem_detected(tmp_path):
    """A path under an NFS or CIFS mount is recognised; local filesystems are not."""
    mounts = _mounts(tmp_path, [
        "/dev/sda1 / ext4 rw 0 0",
        "server:/export /mnt/cluster nfs4 rw 0 0",
        "//host/share /mnt/win cifs rw 0 0",
        "tmpfs /mnt/cluster/local tmpfs rw 0 0",
    ])
    assert network_fs_type(Path("/mnt/cluster/federation/federation.db"), mounts) == "nfs4"
    assert network_fs_type(Path("/mnt/win/x.db"), mounts) == "cifs"
    assert network_fs_type(Path("/mnt/cluster/local/x.db"), mounts) is None
    assert network_fs_type(Path("/home/x.db"), mounts) is None


def test_sqlite_refuses_a_network_filesystem(tmp_path):
    """Opening SQLite on NFS fails with an error that says why and points to FEDERATION_DB_URL."""
    target = tmp_path / "cluster" / "federation.db"
    mounts = _mounts(tmp_path, ["/dev/sda1 / ext4 rw 0 0", f"server:/export {tmp_path / 'cluster'} nfs rw 0 0"])
    db = Database(SqliteDialect(target, mounts_file=mounts))
    with pytest.raises(StorageError, match=r"network filesystem \(nfs\).*FEDERATION_DB_URL=postgresql://"):
        db.fetchall("SELECT 1")
    assert not target.exists()


def test_busy_database_waits_instead_of_failing(tmp_path, monkeypatch):
    """A write lock held by another connection delays a write; "database is locked" never reaches the caller."""
    path = tmp_path / "f.db"
    db = Database(SqliteDialect(path))
    db.execute("CREATE TABLE t (x INTEGER)")
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    release = threading.Timer(0.5, lambda: other.execute("COMMIT"))
    release.start()
    t0 = time.monotonic()
    db.execute("INSERT INTO t VALUES (1)")
    assert time.monotonic() - t0 >= 0.4
    assert db.fetchall("SELECT x FROM t") == [(1,)]
    release.join()
    other.close()


def test_busy_beyond_the_deadline_is_a_storage_error(tmp_path, monkeypatch):
    """A lock held past the deadline gives StorageError saying the database stayed busy."""
    monkeypatch.setattr(database, "BUSY_DEADLINE_S", 0.5)
    path = tmp_path / "f.db"
    db = Database(SqliteDialect(path))
    db.execute("CREATE TABLE t (x INTEGER)")
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(StorageError, match="stayed busy") as info:
            db.execute("INSERT INTO t VALUES (1)")
        assert "database is locked" not in str(info.value).split(":")[0]
    finally:
        other.execute("ROLLBACK")
        other.close()


def test_connections_are_per_thread(tmp_path):
    """Each thread gets its own connection; concurrent writers from threads all land."""
    db = Database(SqliteDialect(tmp_path / "f.db"))
    db.execute("CREATE TABLE t (x INTEGER)")

    def work(base: int) -> None:
        for i in range(50):
            db.execute("INSERT INTO t VALUES (?)", (base + i,))

    threads = [threading.Thread(target=work, args=(k * 1000,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert db.fetchall("SELECT COUNT(*) FROM t") == [(200,)]


def test_reading_the_schema_version_keeps_the_schema_ready(tmp_path):
    """schema_version() on a ready database does not make the next operation re-check the schema."""
    db = Database(SqliteDialect(tmp_path / "f.db"))
    db.ensure_schema()
    assert db.schema_version() == schema.LATEST
    assert db._schema_ready is True


class _RecordingDialect:
    """A stand-in server engine: what ``DIALECT(url)`` of a registered module is given."""

    def __init__(self, url: str):
        self.url = url


DIALECT = _RecordingDialect


def test_a_server_engine_is_registered_by_its_scheme(monkeypatch):
    """An engine is one module named in the registry: its ``DIALECT`` is built from a URL of its scheme
    (imported only then); a scheme no engine registered is a clear configuration error."""
    from federation.errors import ConfigError
    from federation.stores import dialect

    monkeypatch.setattr(dialect, "ENGINES", dict(dialect.ENGINES))
    dialect.register_engine("recording", __name__)
    made = dialect.dialect_for_url("recording://host/db")
    assert isinstance(made, _RecordingDialect) and made.url == "recording://host/db"
    with pytest.raises(ConfigError, match="no database engine is registered for nosuch://"):
        dialect.dialect_for_url("nosuch://host/db")
