"""pulse(wait): sleep until something may have arrived, cheaply (issue 19, docs/delivery.md).

A watcher answers one question, "has anything changed since I last looked?",
without a query that costs the store:

- files (phases 1-2): the ``stat`` of the agent's inbox/ and leased/ folders
  (a delivery renames a file into inbox/, which changes its mtime), every 20 ms;
- SQLite (phases 3-4): ``PRAGMA data_version`` on one connection of its own,
  every 10 ms: it changes when another connection commits, and reads no page;
- PostgreSQL (phases 3-4): ``LISTEN`` on one connection of its own; every send
  NOTIFYs the recipient's name at commit, so the wait blocks on the socket.

A change only means "look again": the caller re-runs its lease or claim, and
looks again at least once a second anyway (a lease that ran out changes nothing
on disk).
"""

from __future__ import annotations

import os
import select
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Callable, Protocol

from .. import config
from ..errors import CorruptFileError
from . import files as _files

__all__ = ["Watcher", "watcher", "RECHECK_S"]

#: the longest a waiting pulse goes without looking at its inbox again (expired leases come back)
RECHECK_S = 1.0


class Watcher(Protocol):
    def changed(self, timeout: float) -> bool:
        """Wait up to *timeout* seconds; True as soon as something may have changed."""


def _poll(watcher: Any, look: Callable[[], Any], timeout: float) -> bool:
    """Look every ``watcher.INTERVAL`` seconds, up to *timeout*; True (and remembered) once what
    *look* sees differs from ``watcher.seen``."""
    deadline = time.monotonic() + timeout
    while True:
        now = look()
        if now != watcher.seen:
            watcher.seen = now
            return True
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        time.sleep(min(watcher.INTERVAL, left))


class FilesWatcher:
    INTERVAL = 0.02

    def __init__(self, folders: list[str], root: Path | str):
        self.folders = folders
        self.root = root
        self.seen = self._signature()

    def _signature(self) -> tuple:
        out = []
        for folder in self.folders:
            try:  # through the gate: a folder that is a link is not looked through (no change seen)
                st = _files.lstat(Path(folder), root=self.root)
                out.append(None if st is None else (st.st_mtime_ns, st.st_ino, st.st_nlink))
            except (OSError, CorruptFileError):
                out.append(None)
        return tuple(out)

    def changed(self, timeout: float) -> bool:
        return _poll(self, self._signature, timeout)


class SqliteWatcher:
    INTERVAL = 0.01

    def __init__(self, path: str):
        conn = _sqlite_conns.get(path)
        if conn is None or conn[1] != os.getpid():
            conn = _sqlite_conns[path] = (sqlite3.connect(path, isolation_level=None, check_same_thread=False),
                                          os.getpid(), threading.Lock())
        self.conn, _, self.lock = conn
        self.seen = self._version()

    def _version(self) -> int:
        with self.lock:
            return self.conn.execute("PRAGMA data_version").fetchone()[0]

    def changed(self, timeout: float) -> bool:
        return _poll(self, self._version, timeout)


_sqlite_conns: dict[str, tuple] = {}


class PostgresWatcher:
    """One LISTEN connection per process and thread; notifications for other agents are skipped."""

    def __init__(self, url: str, agent: str):
        import psycopg

        from .postgres import PostgresDialect
        from .sqlstore import NOTIFY_CHANNEL

        self.agent = agent
        key = (url, threading.get_ident())
        conn = _pg_conns.get(key)
        if conn is None or conn[1] != os.getpid() or conn[0].closed or conn[0].broken:
            dialect = PostgresDialect(url)
            c = psycopg.connect(dialect._conninfo, autocommit=True)
            c.execute(f"LISTEN {NOTIFY_CHANNEL}")
            conn = _pg_conns[key] = (c, os.getpid())
        self.conn = conn[0]
        self._drain()  # what arrived before this wait was looked at by the caller's first take

    def _drain(self) -> bool:
        pg = self.conn.pgconn
        pg.consume_input()
        mine = False
        while (n := pg.notifies()) is not None:
            mine = mine or n.extra.decode("utf-8", "replace") == self.agent
        return mine

    def changed(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            ready, _, _ = select.select([self.conn.pgconn.socket], [], [], left)
            if ready and self._drain():
                return True


_pg_conns: dict[tuple, tuple] = {}


def watcher(agent: str, phase: int) -> Watcher:
    """The cheapest change check for *agent*'s inbox on the side that serves *phase*."""
    s = config.settings()
    if phase <= 2:
        from .. import core  # the module, not its names: the shim is installed on it

        t = core.tree()
        return FilesWatcher([str(t.inbox(agent)), str(t.leased(agent))], t.root)
    if s.db_url:
        return PostgresWatcher(s.db_url, agent)
    return SqliteWatcher(str(s.db_path))
