"""Shared fixtures: a throwaway federation root and database per test.

Every test that uses ``fed`` runs once per storage engine: ``[sqlite]`` on a
temporary file, ``[postgresql]`` on a fresh database of its own.  The
PostgreSQL server is ``FEDERATION_TEST_PG_URL`` when set (``.ci/run`` sets
it), otherwise a throwaway server the session starts (tests/pgserver.py).
Without either, the PostgreSQL cases are skipped with a message saying how to
enable them; under ``CI=true`` that is a failure instead.

A test that only makes sense on one engine says so with
``@pytest.mark.sqlite_only`` or ``@pytest.mark.postgresql_only`` (the other
case is deselected, not skipped).
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import urllib.parse
from pathlib import Path
from typing import Callable

import pytest

from federation import config
from federation.stores.sqlstore import forget_stores

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from pgserver import HOW_TO_ENABLE, PgServer, find_bindir  # noqa: E402

BACKENDS = ("sqlite", "postgresql")
IN_CI = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


class Fed:
    """A federation under a temporary root; switch phases with :meth:`phase`."""

    def __init__(self, root: Path, db_path: Path, db_url: str | None = None,
                 new_pg_database: "Callable[[], str] | None" = None):
        self.root = root
        self._new_pg_database = new_pg_database
        self.db_path = db_path  # the SQLite file; unused when db_url is set
        self.db_url = db_url
        self.engine = "postgresql" if db_url else "sqlite"
        self.env = {"FEDERATION_ROOT": str(root), "FEDERATION_DB": str(db_path), "FEDERATION_USE_DB": "1",
                    "FEDERATION_PHASE": "3", "FEDERATION_SHADOW_SAMPLE": "1.0", "FEDERATION_DB_URL": db_url}
        self.apply()

    def apply(self) -> None:
        config.set_overrides(self.env, replace=True)

    def database_env(self, sqlite_path: Path) -> dict[str, str | None]:
        """Settings of one more empty database on this test's engine (for tests that need several).

        SQLite: the file *sqlite_path*; PostgreSQL: a fresh database, dropped after the test.
        """
        if self.engine == "postgresql":
            return {"FEDERATION_DB_URL": self._new_pg_database(), "FEDERATION_DB": str(sqlite_path)}
        return {"FEDERATION_DB": str(sqlite_path), "FEDERATION_DB_URL": None}

    def phase(self, n: int) -> "Fed":
        """Phase 1 means FEDERATION_USE_DB=0."""
        self.env.update(config.phase_env(n))
        self.apply()
        return self

    def store(self):
        from federation.stores.sqlstore import get_store

        return get_store(config.settings())

    def subprocess_env(self, phase: int | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FEDERATION_")}
        env.update({k: v for k, v in self.env.items() if v is not None})
        if phase is not None:
            env.update(config.phase_env(phase))
        env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
        return env

    def spawn(self, code: str, *args: str, phase: int | None = None) -> subprocess.Popen:
        """Start ``python -c code args...`` as a real process in this federation."""
        return subprocess.Popen([sys.executable, "-c", code, *args], env=self.subprocess_env(phase),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def run_py(self, code: str, phase: int | None = None, timeout: float = 120, check: bool = True,
               **kw) -> subprocess.CompletedProcess:
        proc = subprocess.run([sys.executable, "-c", code], env=self.subprocess_env(phase), capture_output=True,
                              text=True, timeout=timeout, **kw)
        if check and proc.returncode != 0:
            raise AssertionError(f"subprocess failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
        return proc


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "sqlite_only: run the test's fed cases on SQLite only")
    config.addinivalue_line("markers", "postgresql_only: run the test's fed cases on PostgreSQL only")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    keep, drop = [], []
    for item in items:
        engine = getattr(getattr(item, "callspec", None), "params", {}).get("fed")
        only = [e for e in BACKENDS if item.get_closest_marker(f"{e}_only")]
        (drop if engine and only and engine not in only else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


#: Starts the reason of every skip that means "PostgreSQL was not available".
PG_UNAVAILABLE = "PostgreSQL cases not run"
#: Starts the reason of every skip that means "no small filesystem could be mounted".
FS_UNAVAILABLE = "Fault drills on a small filesystem not run"
FS_HOW_TO_ENABLE = "run the tests as root on Linux (the drills mount a tmpfs of their own with mount(8))"
_skipped_pg: list[str] = []
_skipped_fs: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    # Only skips for want of PostgreSQL (or of a mountable filesystem) count; a test
    # may still skip a case that does not apply to an engine, with a reason of its own.
    if report.skipped and PG_UNAVAILABLE in str(report.longrepr):
        _skipped_pg.append(report.nodeid)
    if report.skipped and FS_UNAVAILABLE in str(report.longrepr):
        _skipped_fs.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # In CI the PostgreSQL cases and the fault drills must run: a skipped one fails the run.
    failures = [(skipped, what, how) for skipped, what, how in (
        (_skipped_pg, "PostgreSQL test cases", HOW_TO_ENABLE), (_skipped_fs, "fault drills", FS_HOW_TO_ENABLE))
        if skipped]
    if IN_CI and failures and exitstatus == 0:
        session.exitstatus = 1
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.ensure_newline()
            for skipped, what, how in failures:
                reporter.write_line(f"FAILED: CI=true but {len(skipped)} {what} were skipped "
                                    f"(first: {skipped[0]}); {how}", red=True)


def _pg_unavailable(reason: str) -> None:
    message = f"{PG_UNAVAILABLE}: {reason}. To enable them, {HOW_TO_ENABLE}"
    if IN_CI:
        pytest.fail(message + " (CI=true requires them)", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def pg_admin():
    """(URL, autocommit connection) of a PostgreSQL server whose role may create databases."""
    try:
        import psycopg
    except ImportError:
        _pg_unavailable("psycopg is not installed (pip install -e '.[postgresql]')")
    url = os.environ.get("FEDERATION_TEST_PG_URL", "").strip()
    server = None
    if not url:
        if find_bindir() is None:
            _pg_unavailable("FEDERATION_TEST_PG_URL is unset and no PostgreSQL server binaries were found")
        try:
            server = PgServer().start()
        except Exception as exc:  # noqa: BLE001 - any failure to start is a reason to skip
            _pg_unavailable(f"could not start a throwaway server ({exc})")
        url = server.url
    conn = psycopg.connect(url, autocommit=True)
    yield url, conn
    conn.close()
    if server is not None:
        server.destroy()


@pytest.fixture
def pg_server():
    """A private throwaway PostgreSQL server that the test may stop and start again."""
    if find_bindir() is None:
        _pg_unavailable("no PostgreSQL server binaries were found (a private server is needed)")
    server = PgServer().start()
    yield server
    server.destroy()


_db_numbers = itertools.count(1)


def _with_dbname(url: str, name: str) -> str:
    return urllib.parse.urlsplit(url)._replace(path="/" + name).geturl()


@pytest.fixture
def pg_databases(pg_admin):
    """new() -> the URL of a fresh, empty PostgreSQL database; all are dropped after the test."""
    admin_url, conn = pg_admin
    names: list[str] = []
    # FILE_COPY (PostgreSQL 15+) is the faster way to copy an empty template
    strategy = " STRATEGY FILE_COPY" if conn.info.server_version >= 150000 else ""

    def new() -> str:
        name = f"fed_test_{os.getpid()}_{next(_db_numbers)}"
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0{strategy}')
        names.append(name)
        return _with_dbname(admin_url, name)

    yield new
    forget_stores()
    for name in names:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_url(pg_databases):
    """The URL of a fresh, empty PostgreSQL database for this test (dropped afterwards)."""
    return pg_databases()


def _forget_torn_reads() -> None:
    from federation import rollout
    from federation.stores import files as _files

    rollout.RUNTIME.torn_at = None
    rollout.RUNTIME.torn_counted = _files.torn_reads["recovered"] + _files.torn_reads["unreadable"]
    _files.torn_files.clear()


@pytest.fixture(params=BACKENDS)
def fed(request: pytest.FixtureRequest, tmp_path: Path):
    """A federation on a temporary root, on each storage engine in turn."""
    new_pg_database = request.getfixturevalue("pg_databases") if request.param == "postgresql" else None
    db_url = new_pg_database() if new_pg_database else None
    root = tmp_path / "fed"
    root.mkdir()
    forget_stores()
    _forget_torn_reads()  # a writer outside the fleet seen by an earlier test is not this federation's
    f = Fed(root, tmp_path / "federation.db", db_url, new_pg_database)
    yield f
    forget_stores()
    config.clear_overrides()


def _fs_unavailable(reason: str) -> None:
    message = f"{FS_UNAVAILABLE}: {reason}. To enable them, {FS_HOW_TO_ENABLE}"
    if IN_CI:
        pytest.fail(message + " (CI=true requires them)", pytrace=False)
    pytest.skip(message)


class SmallFs:
    """Small real filesystems (tmpfs) mounted for a fault drill; all unmounted afterwards."""

    def __init__(self) -> None:
        self.mounted: list[Path] = []

    def mount(self, path: Path, size: str = "1m") -> Path:
        """Mount a fresh tmpfs of *size* on the (empty) folder *path*."""
        path.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            _fs_unavailable(f"mount -t tmpfs failed: {proc.stderr.strip() or proc.returncode}")
        self.mounted.append(path)
        return path

    def remount(self, path: Path, mode: str) -> None:
        """``ro`` or ``rw``."""
        subprocess.run(["mount", "-o", f"remount,{mode}", str(path)], check=True, capture_output=True)

    @staticmethod
    def fill(path: Path) -> Path:
        """Fill the filesystem of *path* to the last byte; the filler file (delete it to free the space)."""
        filler = path / "filler.bin"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            for chunk in (1 << 16, 4096, 1):
                block = b"\0" * chunk
                while True:
                    try:
                        os.write(fd, block)
                    except OSError:
                        break
        finally:
            os.close(fd)
        return filler


@pytest.fixture
def small_fs():
    """Mount small tmpfs filesystems for fault drills (root only; skipped otherwise, a failure under CI=true)."""
    if sys.platform != "linux" or os.geteuid() != 0:
        _fs_unavailable("not running as root on Linux")
    fs = SmallFs()
    yield fs
    forget_stores()  # no descriptor of ours may keep a mount busy
    for path in reversed(fs.mounted):
        subprocess.run(["umount", str(path)], capture_output=True)
        if os.path.ismount(path):
            subprocess.run(["umount", "-l", str(path)], capture_output=True)
