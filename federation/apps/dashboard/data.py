"""``federation dashboard``: a read-only web view of the rollout, and Prometheus metrics.

One Starlette application, served by uvicorn (both come with the MCP SDK):

- ``/`` — one page (``dashboard_static/index.html``) that fetches
  ``/api/dashboard`` every few seconds and updates itself in place;
- ``/api/status`` — exactly the ``rollout status --json`` object;
- ``/api/dashboard?window=24h|7d`` — what the page shows: the status object
  plus hourly series, recent mismatches, the guards of the next step, row
  counts per table and the database's state;
- ``/metrics`` — the Prometheus text format, produced per scrape by a
  collector over the control plane's files (no global mutable metrics).

It reads; it never changes the flag.  The flag, the fleet and the counts live
in files under ``$FEDERATION_ROOT/control/`` (:mod:`federation.rollout`), so
they are shown while the database is down; what needs the database (row
counts, the guards) runs off the request path with a time budget, and a
failure or a timeout is shown as the database's state, never as a 500.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from importlib import resources
from typing import Any, Callable, Iterator

from .. import config
from ..domain.moments import parse_duration, parse_moment
from .._logging import library_logger
from ..errors import ValidationError
from ..rollout._counts import HOUR

__all__ = ["WINDOWS", "DashboardData", "MetricsCollector", "create_app", "serve", "window_bounds"]

log = library_logger("federation.dashboard")

#: The selectable windows of the page (name -> length); hourly buckets in each.
WINDOWS: dict[str, timedelta] = {name: parse_duration(name) for name in ("24h", "7d")}
#: How many recent mismatches the page lists.
MISMATCH_LIMIT = 50
#: Longest a request waits for the database before showing it as not answering.
DB_BUDGET_S = 3.0
#: Row counts and guards are recomputed at most this often (the guards run the report).
DB_REFRESH_S = 10.0

_STATIC = {
    "index.html": "text/html; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
    "uPlot.iife.min.js": "text/javascript; charset=utf-8",
    "uPlot.min.css": "text/css; charset=utf-8",
}


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


# -- the database, off the request path ----------------------------------------------------


@dataclass
class _Cached:
    value: Any = None
    error: str | None = None
    at: float = 0.0
    pending: Future | None = None
    pending_since: float = 0.0


class _Bounded:
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


def table_counts() -> dict[str, int] | None:
    """Rows per table (as ``federation status``), None when no database was created yet."""
    from ..stores.database import database_exists

    s = config.settings()
    if not database_exists(s, ask_server=True):
        return None
    from ..stores.sqlstore import get_store

    return get_store(s).counts()


def dead_letters() -> dict[str, Any] | None:
    """Dead letters on the side the fleet's phase serves (count, oldest); None before any database."""
    from .. import rollout
    from ..messaging import dead_letter_summary

    s = config.settings()
    phase = s.effective_phase if s.phase_pinned else rollout.current_phase(s.root)[0]
    if phase >= 3 and table_counts() is None:
        return None
    return dead_letter_summary(phase)


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
    files for 50 processes over 24 h).  Kept: one small row per entity and
    phase per hour, for the longest window.
    """

    def __init__(self, source: Any, keep: timedelta = max(WINDOWS.values()) + timedelta(hours=2)):
        self.source = source
        self.keep_s = keep.total_seconds()
        self._closed: dict[int, list[dict]] = {}
        self._lock = threading.Lock()

    def by_hour(self, since: datetime, until: datetime, now: datetime | None = None) -> list[tuple[int, list[dict]]]:
        """[(hour start, counters() of the part of that hour inside [since, until))], oldest first.

        The hours are those of ``rollout.series``: from the one *since* falls in up
        to the one *until* falls in.
        """
        now_s = (now or datetime.now(timezone.utc)).timestamp()
        lo, hi = since.timestamp(), until.timestamp()
        over_before = (now_s - SETTLE_S) // HOUR * HOUR  # hours ending by then are final
        out: list[tuple[int, list[dict]]] = []
        hour = int(lo // HOUR * HOUR)
        while hour <= hi:
            part_lo, part_hi = max(lo, hour), min(hi, hour + HOUR)
            if part_lo >= part_hi:
                rows: list[dict] = []
            elif part_lo == hour and part_hi == hour + HOUR and hour + HOUR <= over_before \
                    and now_s - hour <= self.keep_s:
                with self._lock:
                    rows = self._closed.get(hour)
                if rows is None:
                    rows = self.source.counters(since=_utc(hour), until=_utc(hour + HOUR))
                    with self._lock:
                        self._closed[hour] = rows
            else:
                rows = self.source.counters(since=_utc(part_lo), until=_utc(part_hi))
            out.append((hour, rows))
            hour += HOUR
        with self._lock:
            for old in [h for h in self._closed if now_s - h > self.keep_s]:
                del self._closed[old]
        return out

    @staticmethod
    def consistency(hours: list[tuple[int, list[dict]]]) -> dict[str, dict]:
        """``rollout.consistency()`` of the window the hours cover."""
        from ..rollout._status import summarise

        return summarise(row for _, rows in hours for row in rows)

    @staticmethod
    def series(hours: list[tuple[int, list[dict]]]) -> dict[str, list[dict]]:
        """``rollout.series()`` (hourly) of the window the hours cover."""
        from ..rollout._io import iso

        per: dict[str, dict[int, list[int]]] = {}
        for hour, rows in hours:
            for row in rows:
                slot = per.setdefault(row["entity"], {}).setdefault(hour, [0, 0, 0])
                slot[0] += row["comparisons"]
                slot[1] += row["mismatches"]
                slot[2] += row["errors"]
        zero = (0, 0, 0)
        return {entity: [{"start": iso(_utc(hour)), "comparisons": per[entity].get(hour, zero)[0],
                          "mismatches": per[entity].get(hour, zero)[1], "errors": per[entity].get(hour, zero)[2]}
                         for hour, _ in hours]
                for entity in sorted(per)}


# -- the data ----------------------------------------------------------------------------


@dataclass
class DashboardData:
    """Everything the page and the metrics show, read from the control plane and the database.

    *source* is the module with the control plane's read functions
    (:mod:`federation.rollout`).
    """

    source: Any = None
    mismatch_limit: int = MISMATCH_LIMIT
    db: _Bounded = field(default_factory=_Bounded)

    def __post_init__(self) -> None:
        if self.source is None:
            from .. import rollout

            self.source = rollout
        self.hourly = HourlyCounts(self.source)

    def _status(self, since: datetime, until: datetime, hours: list[tuple[int, list[dict]]] | None
                ) -> dict[str, Any]:
        """``rollout.status()`` of the window, its consistency summed from the hourly counts."""
        from ..rollout._status import status_document

        summed = self.hourly.consistency(hours) if hours is not None else None
        return status_document(self.source.fleet(), summed, since, until, self.source.history())

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
        reads: dict[str, Callable[[], Any]] = {"tables": table_counts, "dead_letters": dead_letters}
        if status is not None:
            # the phase of the unpinned fleet: the flag's, the history's last when the flag is
            # unreadable, or the default
            current = self.source.current_phase(config.settings().root, ask_db=False)[0]
            target = next_step(current)
            reads[f"guards-{target}"] = lambda: self.source.guards(target)
        answers = self.db.get_many(reads)  # the row counts and the guards need the database
        tables, db_error = answers["tables"]
        letters, _ = answers["dead_letters"]
        guards = None
        if status is not None:
            checks, guard_error = answers[f"guards-{target}"]
            guards = {"from": current, "to": target, "checks": checks, "error": guard_error}
        s = config.settings()
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


# -- Prometheus ----------------------------------------------------------------------------


class MetricsCollector:
    """A prometheus_client collector: one read of the control plane per scrape.

    Counters are totals over all the counts the control plane keeps (so they
    only grow, as Prometheus expects, until ``prune`` drops old counts).  The
    counts of hours that are over change no more: they are summed once an hour
    and only the last two hours are read per scrape.
    """

    def __init__(self, data: DashboardData):
        self.data = data
        self._settled: tuple[datetime, list[dict]] | None = None
        self._lock = threading.Lock()

    def describe(self) -> list:
        return []  # families are only known per scrape; nothing to check at registration

    def totals(self, now: datetime | None = None) -> list[dict]:
        """``counters()`` over every count kept: the settled hours (cached) plus the last two."""
        now = now or datetime.now(timezone.utc)
        # a process flushes its counts every few seconds: an hour that ended an hour ago is complete
        hour = int(now.timestamp()) // HOUR * HOUR
        settled = datetime.fromtimestamp(hour - HOUR, timezone.utc)
        with self._lock:
            cached = self._settled
            if cached is None or cached[0] != settled:
                cached = self._settled = (settled, self.data.source.counters(since=_EPOCH, until=settled))
        from ..rollout._status import merge_counters

        return merge_counters(cached[1], self.data.source.counters(since=settled, until=now))

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        source = self.data.source
        labels = ["entity", "phase"]
        comparisons = CounterMetricFamily("federation_shadow_comparisons", "Shadow comparisons made", labels=labels)
        mismatches = CounterMetricFamily("federation_shadow_mismatches", "Shadow comparisons that differed",
                                         labels=labels)
        errors = CounterMetricFamily("federation_shadow_errors", "Shadow reads that failed", labels=labels)
        latency = HistogramMetricFamily("federation_shadow_latency_seconds",
                                        "Latency of each side of a dual-phase call through the shim (reads and writes)", labels=[*labels, "side"])
        for row in self.totals():
            values = [row["entity"], str(row["phase"])]
            comparisons.add_metric(values, row["comparisons"])
            mismatches.add_metric(values, row["mismatches"])
            errors.add_metric(values, row["errors"])
            for side in ("files", "db"):
                hist = (row.get("latency") or {}).get(side)
                if hist:
                    latency.add_metric([*values, side], _cumulative(hist), sum_value=hist["sum_ms"] / 1000.0)
        yield from (comparisons, mismatches, errors, latency)

        phase, flag, problem = source.current_phase(config.settings().root, ask_db=False)
        yield _gauge(GaugeMetricFamily, "federation_flag_phase",
                     "Phase of the live flag (0: no flag set, unpinned processes run phase 3)",
                     [([], phase if flag is not None or problem else 0)])
        yield _gauge(GaugeMetricFamily, "federation_flag_unreadable",
                     "1 when the flag record cannot be read (processes keep their phase)",
                     [([], 1 if problem else 0)])
        per_phase: dict[tuple[str, str, str], int] = {}
        for proc in source.fleet():
            key = (str(proc["phase"]), str(proc["source"]), "true" if proc["alive"] else "false")
            per_phase[key] = per_phase.get(key, 0) + 1
        yield _gauge(GaugeMetricFamily, "federation_processes", "Processes of the fleet per phase in effect",
                     sorted(per_phase.items()), ["phase", "source", "alive"])

        tables, error = self.data.db.get("tables", table_counts)
        yield _gauge(GaugeMetricFamily, "federation_database_up", "1 when the database answered the row counts",
                     [([], 0 if error else 1)])
        if tables:
            yield _gauge(GaugeMetricFamily, "federation_table_rows", "Rows per table of the database",
                         [([t], n) for t, n in tables.items()], ["table"])
        letters, _ = self.data.db.get("dead_letters", dead_letters)
        if letters is not None:
            yield _gauge(GaugeMetricFamily, "federation_dead_letters",
                         "Messages delivered the maximum number of times and never acknowledged",
                         [([], letters["count"])])
            yield _gauge(GaugeMetricFamily, "federation_dead_letter_oldest_age_seconds",
                         "Age of the oldest dead letter (0 when there is none)",
                         [([], letters["oldest_age_s"] or 0.0)])


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _gauge(cls: type, name: str, doc: str, samples: list, labels: list[str] | None = None) -> Any:
    family = cls(name, doc, labels=labels or [])
    for values, value in samples:
        family.add_metric(list(values), value)
    return family


def _cumulative(hist: dict[str, Any]) -> list[tuple[str, float]]:
    """The control plane's non-cumulative ms buckets as Prometheus's cumulative second buckets."""
    buckets, running = [], 0
    bounds = [*hist["bounds_ms"], None]
    for bound, count in zip(bounds, hist["counts"]):
        running += count
        buckets.append(("+Inf" if bound is None else repr(bound / 1000.0), running))
    return buckets


# -- the web application -------------------------------------------------------------------


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def create_app(data: DashboardData | None = None, refresh_s: float = 5.0,
               allowed_hosts: list[str] | None = None) -> Any:
    """The Starlette application; *allowed_hosts* limits the ``Host`` header (DNS rebinding)."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.middleware import Middleware
    from starlette.middleware.trustedhost import TrustedHostMiddleware
    from starlette.requests import Request
    from starlette.responses import JSONResponse, PlainTextResponse, Response
    from starlette.routing import Route

    data = data or DashboardData()
    registry = CollectorRegistry(auto_describe=False)
    collector = MetricsCollector(data)
    registry.register(collector)
    static = {name: resources.files("federation.apps").joinpath("dashboard_static", name).read_bytes()
              for name in _STATIC}
    static["index.html"] = static["index.html"].replace(b"{{refresh_ms}}", str(int(refresh_s * 1000)).encode())

    def window_of(request: Request) -> str:
        unknown = set(request.query_params) - {"window"}
        if unknown:
            raise BadRequest(f"unknown query parameter {sorted(unknown)[0]!r}: only window= is accepted")
        name = request.query_params.get("window", "24h")
        window_bounds(name)  # validates
        return name

    def page(request: Request) -> Response:
        window_of(request)
        return Response(static["index.html"], media_type=_STATIC["index.html"],
                        headers={"Cache-Control": "no-store"})

    def asset(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in _STATIC:
            raise HTTPException(404, f"no such file: /static/{name}")
        return Response(static[name], media_type=_STATIC[name], headers={"Cache-Control": "max-age=3600"})

    def api_status(request: Request) -> Response:
        # like `rollout status --json [--since WHEN]`, or the page's ?window=
        params = request.query_params
        unknown = set(params) - {"window", "since"}
        if unknown or ("window" in params and "since" in params):
            raise BadRequest("/api/status takes either window= (24h or 7d) or since= (an ISO 8601 time or a "
                             "duration like 30m, 12h, 7d)")
        if "since" in params:
            return JSONResponse(data.status(parse_since(params["since"])))
        return JSONResponse(data.status(*window_bounds(window_of(request))))

    def api_dashboard(request: Request) -> Response:
        return JSONResponse(data.page(window_of(request)), headers={"Cache-Control": "no-store"})

    def metrics(request: Request) -> Response:
        if request.query_params:
            raise BadRequest("/metrics takes no query parameters")
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    def bad_request(request: Request, exc: Exception) -> Response:
        return _error(request, 400, str(exc))

    def not_found(request: Request, exc: Exception) -> Response:
        detail = getattr(exc, "detail", None) or f"no such page: {request.url.path}"
        if detail == "Not Found":
            detail = f"no such page: {request.url.path}"
        return _error(request, getattr(exc, "status_code", 404), detail)

    def crashed(request: Request, exc: Exception) -> Response:
        # never a traceback to the browser; it goes to the log
        log.error("dashboard_request_failed", path=request.url.path, error=str(exc), exc_info=exc)
        return _error(request, 503, f"could not read the rollout state: {type(exc).__name__}: {exc}")

    def _error(request: Request, status: int, message: str) -> Response:
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": message}, status_code=status)
        return PlainTextResponse(message + "\n", status_code=status)

    middleware = []
    if allowed_hosts:
        middleware.append(Middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts))
    app = Starlette(
        routes=[
            Route("/", page, methods=["GET", "HEAD"]),
            Route("/static/{name}", asset, methods=["GET", "HEAD"]),
            Route("/api/status", api_status, methods=["GET"]),
            Route("/api/dashboard", api_dashboard, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
        ],
        middleware=middleware,
        exception_handlers={BadRequest: bad_request, HTTPException: not_found, Exception: crashed},
    )
    app.state.data = data
    app.state.collector = collector
    return app


def _warm(app: Any) -> None:
    """Read the hours the page and the metrics need once, before the first request asks for them."""
    try:
        for window in WINDOWS:  # the default window first: the page asks for it first
            app.state.data.hourly.by_hour(*window_bounds(window))
        app.state.collector.totals()
    except Exception as exc:  # noqa: BLE001 - only a head start; the requests report their own errors
        log.warning("dashboard_warm_up_failed", error=str(exc))


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket on (host, port), or an OSError saying why not (before anything is served)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise OSError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def serve(host: str = "127.0.0.1", port: int = 8321, refresh_s: float = 5.0,
          on_listening: Callable[[str], None] | None = None) -> None:
    """Serve the dashboard until interrupted (binds to loopback unless told otherwise).

    *on_listening* is called with the page's URL once the socket is bound (port 0: a free one).
    A port in use or an unknown host raises :class:`OSError` before anything is served.
    """
    import uvicorn

    loopback = _is_loopback(host)
    # Behind loopback, refuse other Host names: a web page elsewhere cannot read it through DNS rebinding.
    allowed = ["127.0.0.1", "localhost", "[::1]", f"[{host}]" if ":" in host else host] if loopback else None
    app = create_app(refresh_s=refresh_s, allowed_hosts=allowed)
    sock = _listen(host, port)
    port = sock.getsockname()[1]
    if not loopback:
        log.warning("dashboard_exposed", host=host, port=port,
                    detail="the dashboard has no authentication; anyone who can reach this address can read it")
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}/"
    log.info("dashboard_started", url=url)
    if on_listening is not None:
        on_listening(url)
    threading.Thread(target=_warm, args=(app,), name="dashboard-warm-up", daemon=True).start()
    server = uvicorn.Server(uvicorn.Config(app, access_log=False, log_level="warning", log_config=None))
    with sock:
        server.run(sockets=[sock])
