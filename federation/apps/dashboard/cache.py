"""The dashboard's reads of the database, off the request path: a time budget and a cache.

The flag, the fleet and the counts are files and answer at once; the row
counts, the dead letters and the guards need the database, which may be down
or slow to say so.  They run here, in background threads, so that a page or
a scrape waits at most a few seconds and then shows the database as not
answering.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any, Callable

from ..._logging import library_logger

__all__ = ["BoundedReads", "DB_BUDGET_S", "DB_REFRESH_S"]

log = library_logger("federation.dashboard")

#: Longest a request waits for the database before showing it as not answering.
DB_BUDGET_S = 3.0
#: Row counts and guards are recomputed at most this often (the guards run the report).
DB_REFRESH_S = 10.0


@dataclass
class _Cached:
    value: Any = None
    error: str | None = None
    at: float = 0.0
    pending: Future | None = None
    pending_since: float = 0.0


class BoundedReads:
    """Run database reads in background threads, with a time budget and a cache.

    A database that is down makes a PostgreSQL connect wait up to 30 s
    (reconnecting): a request waits at most ``budget_s`` and then reports the
    database as not answering, while the read finishes (or fails) in the
    background.  One read per key is in flight at a time, and a request that
    finds it already past its budget does not wait again, so a page refresh
    stays fast while the database is away.
    """

    def __init__(self, budget_s: float = DB_BUDGET_S, max_age_s: float = DB_REFRESH_S):
        self.budget_s = budget_s
        self.max_age_s = max_age_s
        self._lock = threading.Lock()
        self._cache: dict[str, _Cached] = {}

    def get(self, key: str, fn: Callable[[], Any]) -> tuple[Any, str | None]:
        """(value, None), or (None, what went wrong)."""
        return self.get_many({key: fn})[key]

    def get_many(self, reads: dict[str, Callable[[], Any]]) -> dict[str, tuple[Any, str | None]]:
        """:meth:`get` of several keys, run side by side within one budget."""
        now = time.monotonic()
        out: dict[str, tuple[Any, str | None]] = {}
        waiting: dict[str, tuple[_Cached, Future, float]] = {}
        with self._lock:
            for key, fn in reads.items():
                entry = self._cache.setdefault(key, _Cached())
                if entry.error is None and entry.at and now - entry.at < self.max_age_s:
                    out[key] = (entry.value, None)
                    continue
                if entry.pending is None:
                    entry.pending, entry.pending_since = self._start(key, entry, fn), now
                waiting[key] = (entry, entry.pending, entry.pending_since)
        for key, (entry, pending, since) in waiting.items():
            try:
                pending.result(timeout=max(0.0, self.budget_s - (time.monotonic() - since)))
            except FutureTimeout:
                out[key] = (None, f"the database has not answered for {time.monotonic() - since:.0f} s")
                continue
            with self._lock:
                out[key] = (entry.value, None) if entry.error is None else (None, entry.error)
        return out

    def _start(self, key: str, entry: _Cached, fn: Callable[[], Any]) -> Future:
        # a daemon thread, not an executor's: a read stuck on a dead server must not hold up the exit
        done: Future = Future()

        def run() -> None:
            try:
                self._fill(entry, fn)
            finally:
                done.set_result(None)

        threading.Thread(target=run, name=f"dashboard-db-{key}", daemon=True).start()
        return done

    def _fill(self, entry: _Cached, fn: Callable[[], Any]) -> None:
        try:
            value, error = fn(), None
        except Exception as exc:  # noqa: BLE001 - any failure is the database's state, shown on the page
            value, error = None, str(exc) if str(exc).startswith(type(exc).__name__) else f"{type(exc).__name__}: {exc}"
            log.warning("dashboard_database_error", error=error)
        with self._lock:
            entry.value, entry.error, entry.at, entry.pending = value, error, time.monotonic(), None
