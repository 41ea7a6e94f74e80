"""pulse(wait): sleep until something may have arrived, cheaply (issue 19, docs/delivery.md).

A watcher answers one question, "has anything changed since I last looked?",
without a query that costs the store:

- files (phases 1-2): the ``stat`` of the agent's inbox/ and leased/ folders
  (a delivery renames a file into inbox/, which changes its mtime), every 20 ms;
- SQLite (phases 3-4): ``PRAGMA data_version`` on one connection of its own,
  every 10 ms: it changes when another connection commits, and reads no page
  (:class:`federation.stores.sqlite.SqliteWatcher`);
- PostgreSQL (phases 3-4): ``LISTEN`` on one connection of its own; every send
  NOTIFYs the recipient's name at commit, so the wait blocks on the socket
  (:class:`federation.stores.postgres.PostgresWatcher`).

Each engine's watcher is its dialect's (``Dialect.watcher``); this module knows the files' and the protocol.

A change only means "look again": the caller re-runs its lease or claim, and
looks again at least once a second anyway (a lease that ran out changes nothing
on disk).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Protocol

from ..errors import CorruptFileError
from . import files as _files
from .dialect import Dialect
from .files import Tree

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


def watcher(agent: str, phase: int, tree: Tree, dialect: Dialect | None) -> Watcher | None:
    """The cheapest change check for *agent*'s inbox on the side that serves *phase*: the legacy *tree*
    (phases 1-2), the database of *dialect* (3-4); None: none cheaper than looking."""
    if phase <= 2:
        return FilesWatcher([str(tree.inbox(agent)), str(tree.leased(agent))], tree.root)
    return dialect.watcher(agent)
