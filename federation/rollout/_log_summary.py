"""``federation report --log``: the shadow events of a structlog JSON-lines log, with the fleet's counts.

:func:`summarise_log` counts the ``shadow_mismatch`` / ``shadow_error`` events per
entity over the log's period, and puts the comparisons the fleet counted (``federation
rollout``) in place of the records proxy when there are any.  The rollout's, not the
report's: it reads the rollout's counts (the report only lends its row totals).
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import config
from . import _status

if TYPE_CHECKING:
    from ..transfer.report import Report

__all__ = ["summarise_log", "SHADOW_EVENTS"]

SHADOW_EVENTS = ("shadow_mismatch", "shadow_error")


def summarise_log(path: Path, report: Report | None = None, *,
                  settings: config.Settings) -> dict[str, Any]:
    """Count ``shadow_mismatch`` / ``shadow_error`` events per entity in a JSON-lines log.

    The consistency rate is ``1 - mismatches / comparisons`` of the comparisons
    the fleet counted (``rate_source: "counted"``).  Without counts it falls
    back to the share of records (the rows of both sides now, from *report*)
    that had no shadow event in the period (``rate_source: "records"``, also
    kept as ``records_rate``); ``None`` when unknown.  *settings*: the federation whose counts are
    read.
    """
    per: dict[str, dict[str, Any]] = {}
    first = last = None
    lines = unreadable = 0
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if not line.strip():
                continue
            lines += 1
            try:
                event = json.loads(line)
            except ValueError:
                unreadable += 1
                continue
            if not isinstance(event, dict) or event.get("event") not in SHADOW_EVENTS:
                continue
            stamp = event.get("timestamp")
            if isinstance(stamp, str):
                first = stamp if first is None or stamp < first else first
                last = stamp if last is None or stamp > last else last
            entity = str(event.get("entity") or "?")
            slot = per.setdefault(entity, {"shadow_mismatch": 0, "shadow_error": 0, "keys": set(), "phases": set()})
            slot[event["event"]] += 1
            if event.get("key") is not None:
                slot["keys"].add(str(event["key"]))
            if event.get("phase") is not None:
                slot["phases"].add(event["phase"])
    entities: dict[str, Any] = {}
    tables = report.entities if report is not None else {}
    total_keys = 0
    for entity in sorted(per):
        slot = per[entity]
        keys = len(slot["keys"])
        records = rate = None
        if entity in tables:
            t = tables[entity]
            records = t.files + len(t.missing_in_files)  # keys on either side
            if records:
                rate = max(0.0, 1.0 - keys / records)
                total_keys += min(keys, records)
        entities[entity] = {"shadow_mismatch": slot["shadow_mismatch"], "shadow_error": slot["shadow_error"],
                            "keys": keys, "records": records, "consistency_rate": rate,
                            "phases": sorted(slot["phases"], key=str)}
    total_records = sum(t.files + len(t.missing_in_files) for t in tables.values())
    overall = (1.0 - total_keys / total_records) if total_records else None
    summary = {"path": str(path), "lines": lines, "unreadable_lines": unreadable, "first": first, "last": last,
               "events": sum(s["shadow_mismatch"] + s["shadow_error"] for s in per.values()),
               "entities": entities, "consistency_rate": overall, "rate_source": "records"}
    _use_counts(summary, first, settings)
    return summary


def _use_counts(summary: dict[str, Any], first: str | None, settings: config.Settings) -> None:
    """Put the fleet's counted comparisons (``federation rollout``) in place of the records proxy.

    The window starts at the hour of the log's first shadow event (the last
    24 hours without one) and ends now.  Without counted comparisons the proxy stays,
    with ``rate_source: "records"``; each entity keeps it as ``records_rate``.
    """
    until = datetime.now(timezone.utc)
    since = None
    if first is not None:
        try:
            since = datetime.fromisoformat(first.replace("Z", "+00:00"))
            since = since if since.tzinfo else since.replace(tzinfo=timezone.utc)
        except ValueError:
            since = None
    if since is None or since > until:
        since = until - timedelta(hours=24)
    else:  # the whole hour: counts are kept per bucket, and the log's period is approximate anyway
        since = since.replace(minute=0, second=0, microsecond=0)
    counted = _status.consistency(since, until, settings=settings)
    entities = summary["entities"]
    for slot in entities.values():
        slot["records_rate"] = slot["consistency_rate"]
    if not any(c["comparisons"] for c in counted.values()):
        return
    for entity, c in counted.items():
        slot = entities.setdefault(entity, {"shadow_mismatch": 0, "shadow_error": 0, "keys": 0, "records": None,
                                            "consistency_rate": None, "records_rate": None, "phases": []})
        slot.update(comparisons=c["comparisons"], mismatches=c["mismatches"], errors=c["errors"],
                    consistency_rate=c["rate"])
    for slot in entities.values():
        if "comparisons" not in slot:  # events in the log, but no comparison counted in the window
            slot.update(comparisons=0, mismatches=0, errors=0, consistency_rate=None)
    comparisons = sum(c["comparisons"] for c in counted.values())
    mismatches = sum(c["mismatches"] for c in counted.values())
    summary.update(records_rate=summary["consistency_rate"], comparisons=comparisons, mismatches=mismatches,
                   consistency_rate=(1.0 - mismatches / comparisons) if comparisons else None, rate_source="counted",
                   window={"since": since.isoformat(), "until": until.isoformat()})
