"""The dashboard's ``/metrics``: the Prometheus text format, produced per scrape by a collector.

The collector reads the control plane's files of the federation its
:class:`~federation.apps.dashboard.data.DashboardData` was handed, once per
scrape: there are no global mutable metrics, and two collectors in one process
(two federations) each expose their own.
"""

from __future__ import annotations

import threading
from datetime import datetime, timezone
from typing import Any, Iterator

from ...rollout import HOUR, merge_counters
from .data import DashboardData

__all__ = ["MetricsCollector"]


class MetricsCollector:
    """A prometheus_client collector: one read of the control plane per scrape.

    Counters are totals over all the counts the control plane keeps (so they
    only grow, as Prometheus expects, until ``prune`` drops old counts).  The
    counts of hours that are over change no more: they are summed once an hour
    and only the last two hours are read per scrape.
    """

    def __init__(self, data: DashboardData):
        from prometheus_client import CollectorRegistry

        self.data = data
        self._settled: tuple[datetime, list[dict]] | None = None
        self._lock = threading.Lock()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    def exposition(self) -> tuple[bytes, str]:
        """The ``/metrics`` answer: the body in Prometheus's text format, and its content type."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST

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

        phase, flag, problem = source.current_phase()
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

        tables, error = self.data.db.get("tables", self.data.table_counts)
        yield _gauge(GaugeMetricFamily, "federation_database_up", "1 when the database answered the row counts",
                     [([], 0 if error else 1)])
        if tables:
            yield _gauge(GaugeMetricFamily, "federation_table_rows", "Rows per table of the database",
                         [([t], n) for t, n in tables.items()], ["table"])
        letters, _ = self.data.db.get("dead_letters", self.data.dead_letters)
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
