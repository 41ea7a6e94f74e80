"""What the dashboard shows, read from the control plane and the database of one federation.

Everything here is handed the :class:`~federation.config.Settings` of the
federation it reads (the application builds them once when it starts serving)
instead of reading the process's configuration, so two federations can be read
side by side in one process (the dead letters of the files, phases 1-2, too: they
are read while serving that federation's settings).

The control plane's files answer while the database is down; what needs the
database runs off the request path, with a time budget and a cache
(:mod:`.cache`).  The counts are summed with the rollout's own functions
(``merge_counters``, ``summarise``, ``tally``/``points``, ``status_document``):
one aggregation for ``rollout status``, the page and ``/metrics``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

from ... import rollout
from ...config import Settings
from ...domain.moments import parse_duration, parse_moment
from ..._logging import library_logger
from ...errors import ValidationError
from ...rollout import HOUR
from .cache import BoundedReads

__all__ = ["WINDOWS", "BadRequest", "ControlPlane", "DashboardData", "HourlyCounts", "parse_since",
           "window_bounds", "table_counts", "dead_letters", "next_step"]

log = library_logger("federation.dashboard")

#: The selectable windows of the page (name -> length); hourly buckets in each.
WINDOWS: dict[str, timedelta] = {name: parse_duration(name) for name in ("24h", "7d")}
#: How many recent mismatches the page lists.
MISMATCH_LIMIT = 50


class BadRequest(ValueError):
    """A query value the dashboard does not accept (answered with 400)."""


def window_bounds(name: str, now: datetime | None = None) -> tuple[datetime, datetime]:
    """(since, until) of the named window, ending now.

    As ``rollout status --since 24h``: the counts of every clock hour the window
    touches, so the chart has one point per such hour (25 for 24 h) and the
    numbers beside it are the sum of its points.
    """
    if name not in WINDOWS:
        raise BadRequest(f"window={name!r} is not accepted: use {' or '.join(WINDOWS)}")
    until = now or datetime.now(timezone.utc)
    return until - WINDOWS[name], until


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """``?since=``: as ``--since``, an ISO 8601 time or a duration back from now (the grammar of ``domain.moments``)."""
    try:
        return parse_moment(text, now)
    except ValidationError as exc:
        raise BadRequest(f"since={exc}") from None


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def next_step(current: int) -> int:
    """The phase whose guards the page shows: up one, or from 4 back to 3 (the only move from there)."""
    return current + 1 if current < 4 else 3


def table_counts(settings: Settings) -> dict[str, int] | None:
    """Rows per table (as ``federation status``), None when no database was created yet."""
    from ...stores.database import database_exists

    if not database_exists(settings, ask_server=True):
        return None
    from ...stores.sqlstore import get_store

    return get_store(settings).counts()


def dead_letters(settings: Settings) -> dict[str, Any] | None:
    """Dead letters on the side the fleet's phase serves (count, oldest); None before any database."""
    from ...messaging import dead_letter_summary

    phase = (settings.effective_phase if settings.phase_pinned
             else rollout.current_phase(settings.root, settings=settings)[0])
    if phase >= 3 and table_counts(settings) is None:
        return None
    return dead_letter_summary(phase, settings=settings)  # (the files of phases 1-2: those of *settings*)


# -- the counts, per clock hour ------------------------------------------------------------

#: An hour is over (its counts final) this long after it ends: processes flush every few seconds.
SETTLE_S = 120.0


def _utc(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, timezone.utc)


class HourlyCounts:
    """The control plane's ``counters()`` per clock hour; the hours that are over are read once.

    A window's consistency and its hourly series are sums over its hours, so a
    refresh reads only the files of the hour in progress (and, just after an
    hour ends, of the one before) and of the window's partial first hour,
    instead of every file of the window (a file per process and hour: 1,200
    files for 50 processes over 24 h).  The hours that are over and not kept
    yet (all of them at the first read) are read in one pass over their files
    (``counters_by_hour``: a day file once, not once per hour it holds), by one
    thread at a time: a request arriving while the start-up warm-up reads them
    waits for that read instead of doing it again.  Kept: one small row per
    entity and phase per hour, for the longest window.
    """

    def __init__(self, source: Any, keep: timedelta = max(WINDOWS.values()) + timedelta(hours=2)):
        self.source = source
        self.keep_s = keep.total_seconds()
        self._closed: dict[int, list[dict]] = {}
        self._lock = threading.Lock()
        self._reading = threading.Lock()  # one reader of the hours not kept yet at a time

    def _whole(self, hour: int, lo: float, hi: float, now_s: float, over_before: float) -> bool:
        """The window holds *hour* whole, the hour is over and within what is kept."""
        return lo <= hour and hour + HOUR <= hi and hour + HOUR <= over_before and now_s - hour <= self.keep_s

    def _read_closed(self, hours: list[int]) -> None:
        """Read and keep the hours *hours* (over, not kept yet), in one pass over their files."""
        with self._reading:
            with self._lock:
                hours = [h for h in hours if h not in self._closed]  # read meanwhile by another thread
            if not hours:
                return
            by_hour = getattr(self.source, "counters_by_hour", None)
            if by_hour is None:  # a source without the one-pass read: an hour at a time
                read = {h: self.source.counters(since=_utc(h), until=_utc(h + HOUR)) for h in hours}
            else:
                read = by_hour(since=_utc(hours[0]), until=_utc(hours[-1] + HOUR))
            with self._lock:
                for h in hours:
                    self._closed[h] = read.get(h, [])

    def by_hour(self, since: datetime, until: datetime, now: datetime | None = None) -> list[tuple[int, list[dict]]]:
        """[(hour start, counters() of the part of that hour inside [since, until))], oldest first.

        The hours are those of ``rollout.series``: from the one *since* falls in up
        to the one *until* falls in.
        """
        now_s = (now or datetime.now(timezone.utc)).timestamp()
        lo, hi = since.timestamp(), until.timestamp()
        over_before = (now_s - SETTLE_S) // HOUR * HOUR  # hours ending by then are final
        starts = list(range(int(lo // HOUR * HOUR), int(hi) + 1, HOUR))
        with self._lock:
            missing = [h for h in starts if self._whole(h, lo, hi, now_s, over_before) and h not in self._closed]
        if missing:
            self._read_closed(missing)
        out: list[tuple[int, list[dict]]] = []
        for hour in starts:
            part_lo, part_hi = max(lo, hour), min(hi, hour + HOUR)
            rows: list[dict] | None = None
            if part_lo >= part_hi:
                rows = []
            elif self._whole(hour, lo, hi, now_s, over_before):
                with self._lock:
                    rows = self._closed.get(hour)
            if rows is None:  # the hour in progress, a part of one, or one the keeping dropped meanwhile
                rows = self.source.counters(since=_utc(part_lo), until=_utc(part_hi))
            out.append((hour, rows))
        with self._lock:
            for old in [h for h in self._closed if now_s - h > self.keep_s]:
                del self._closed[old]
        return out

    @staticmethod
    def consistency(hours: list[tuple[int, list[dict]]]) -> dict[str, dict]:
        """``rollout.consistency()`` of the window the hours cover."""
        return rollout.summarise(row for _, rows in hours for row in rows)

    @staticmethod
    def series(hours: list[tuple[int, list[dict]]]) -> dict[str, list[dict]]:
        """``rollout.series()`` (hourly) of the window the hours cover."""
        per: dict[str, dict[int, list[int]]] = {}
        for hour, rows in hours:
            for row in rows:
                rollout.tally(per, row["entity"], hour, row)
        return rollout.points(per, [hour for hour, _ in hours], timezone.utc)


# -- the data ----------------------------------------------------------------------------


class ControlPlane:
    """The rollout's read functions (:mod:`federation.rollout`) for the federation of *settings*."""

    def __init__(self, settings: Settings):
        self.settings = settings

    def fleet(self) -> list[dict]:
        return rollout.fleet(settings=self.settings)

    def history(self) -> list[dict]:
        return rollout.history(settings=self.settings)

    def counters(self, since: datetime | None = None, until: datetime | None = None) -> list[dict]:
        return rollout.counters(since, until, settings=self.settings)

    def counters_by_hour(self, since: datetime, until: datetime) -> dict[int, list[dict]]:
        return rollout.counters_by_hour(since, until, settings=self.settings)

    def recent_mismatches(self, limit: int = 100) -> list[dict]:
        return rollout.recent_mismatches(limit, settings=self.settings)

    def status(self, since: datetime | None = None, until: datetime | None = None) -> dict[str, Any]:
        return rollout.status(since, until, settings=self.settings)

    def status_document(self, processes: list[dict], summed: Any, since: datetime, until: datetime,
                        past: list[dict]) -> dict[str, Any]:
        return rollout.status_document(processes, summed, since, until, past, settings=self.settings)

    def current_phase(self) -> tuple[int, Any, str | None]:
        """The phase of the unpinned fleet, the flag, why the flag is unreadable: from the files alone
        (the request path must answer while the database is down)."""
        return rollout.current_phase(self.settings.root, ask_db=False, settings=self.settings)

    def guards(self, target: int) -> list[dict]:
        return rollout.guards(target, settings=self.settings)


@dataclass
class DashboardData:
    """Everything the page and the metrics show, read from the control plane and the database of the
    federation of *settings*; *source* reads its control plane (by default :class:`ControlPlane`)."""

    settings: Settings
    source: Any = None
    mismatch_limit: int = MISMATCH_LIMIT
    db: BoundedReads = field(default_factory=BoundedReads)

    def __post_init__(self) -> None:
        if self.source is None:
            self.source = ControlPlane(self.settings)
        self.hourly = HourlyCounts(self.source)

    def table_counts(self) -> dict[str, int] | None:
        return table_counts(self.settings)

    def dead_letters(self) -> dict[str, Any] | None:
        return dead_letters(self.settings)

    def _status(self, since: datetime, until: datetime, hours: list[tuple[int, list[dict]]] | None
                ) -> dict[str, Any]:
        """``rollout.status()`` of the window, its consistency summed from the hourly counts."""
        summed = self.hourly.consistency(hours) if hours is not None else None
        return self.source.status_document(self.source.fleet(), summed, since, until, self.source.history())

    def status(self, since: datetime, until: datetime | None = None) -> dict[str, Any]:
        """``rollout.status(since, until)``; a window within the hours kept is summed from them."""
        until = until or datetime.now(timezone.utc)
        if since > until:
            raise BadRequest(f"the window starts ({_iso(since)}) after it ends ({_iso(until)})")
        if (until - since).total_seconds() > self.hourly.keep_s - HOUR:
            return self.source.status(since=since, until=until)
        return self._status(since, until, self.hourly.by_hour(since, until))

    def page(self, window: str = "24h") -> dict[str, Any]:
        """The page's data; a part that cannot be read is null, with its error in ``problems``."""
        since, until = window_bounds(window)
        problems: list[dict[str, str]] = []

        def part(name: str, fn: Callable[[], Any]) -> Any:
            try:
                return fn()
            except Exception as exc:  # noqa: BLE001 - one unreadable part must not hide the others
                problems.append({"part": name, "error": f"{type(exc).__name__}: {exc}"})
                log.warning("dashboard_part_failed", part=name, error=str(exc))
                return None

        hours = part("counts", lambda: self.hourly.by_hour(since, until))
        status = part("status", lambda: self._status(since, until, hours))
        series = None if hours is None else self.hourly.series(hours)
        mismatches = part("mismatches", lambda: self.source.recent_mismatches(limit=self.mismatch_limit))
        reads: dict[str, Callable[[], Any]] = {"tables": self.table_counts, "dead_letters": self.dead_letters}
        if status is not None:
            # the phase of the unpinned fleet: the flag's, the history's last when the flag is
            # unreadable, or the default
            current = self.source.current_phase()[0]
            target = next_step(current)
            reads[f"guards-{target}"] = lambda: self.source.guards(target)
        answers = self.db.get_many(reads)  # the row counts and the guards need the database
        tables, db_error = answers["tables"]
        letters, _ = answers["dead_letters"]
        guards = None
        if status is not None:
            checks, guard_error = answers[f"guards-{target}"]
            guards = {"from": current, "to": target, "checks": checks, "error": guard_error}
        s = self.settings
        return {
            "generated_at": _iso(datetime.now(timezone.utc)),
            "window": {"name": window, "since": _iso(since), "until": _iso(until),
                       "bucket_seconds": HOUR},
            "status": status,
            "series": series,
            "mismatches": mismatches,
            "guards": guards,
            "tables": tables,
            "dead_letters": letters,
            "database": {"display": s.db_display, "engine": s.engine, "ok": db_error is None,
                         "error": db_error},
            "problems": problems,
        }


