"""Guarded steps: what ``federation rollout set`` checks before it moves the fleet.

Each guard is ``{"name", "ok", "detail", "fix"}``.  Only the guards that apply
to the step are returned:

| guard | applies when | refuses when |
|---|---|---|
| ``backfilled`` | going to 3 or 4 | the database was never backfilled while legacy files exist |
| ``report_consistent`` | going up to 3 or 4 | ``federation report`` finds differences (each re-read under its lock) |
| ``consistency_rate`` | going up to 3 or 4 | the window's counted rate is below ``min_rate`` |
| ``enough_comparisons`` | going up to 3 or 4 | the window has fewer than ``min_comparisons`` comparisons |

The window starts at ``since`` (exact to the second), else when the current phase was entered.
| ``fleet_mix`` | going to 4 / to 1 or 2 | a live process is in phase 1 or 2 / in phase 4 |
| ``adopted_code`` | going to 4 | a live process runs code adopted with ``federation.adopt`` |
| ``unannounced_writers`` | going up to 2 or 3 | a process saw a legacy file half-written, or rewritten by no process of the fleet, in the last 2 minutes |
| ``files_current`` | going down from 4 | the files lag the database (``federation sync --to files``) |

A difference that is gone once its document is re-read under its file lock
(the lock every dual-phase write holds across both sides) was a write in
flight, not a lag: only differences that remain refuse a step, so the guards
work while the fleet keeps writing.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

from .. import config
from .._logging import library_logger
from ..domain.authority import repair_command
from ..errors import ConfigError
from . import _default, _fleet, _flag, _io, _status
from ._default import current_phase

log = library_logger("federation.rollout")

DEFAULT_MIN_RATE = 0.999
DEFAULT_MIN_COMPARISONS = 100


def _guard(name: str, ok: bool, detail: str, fix: str = "") -> dict[str, Any]:
    return {"name": name, "ok": bool(ok), "detail": detail, "fix": "" if ok else fix}


def _checked(name: str, fix: str, check: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run a guard that needs the database; failing to check refuses (naming why)."""
    try:
        return check()
    except Exception as exc:  # noqa: BLE001 - an unreachable database is an answer, not a crash
        return _guard(name, False, f"could not be checked: {type(exc).__name__}: {exc}",
                      f"bring the database back and retry, or {fix}")


# ---------------------------------------------------------------------------
# the database guards


def _backfilled(s: config.Settings) -> dict[str, Any]:
    legacy, exists, at = _default.backfill_state(s)
    if not exists:
        if legacy:
            return _guard("backfilled", False, f"the database {s.db_display} does not exist yet and legacy files "
                          "do", "run `federation migrate`")
        return _guard("backfilled", True, "a new federation: no legacy files to backfill")
    if at is None and legacy:
        return _guard("backfilled", False, f"the database {s.db_display} was never backfilled from the legacy files",
                      "run `federation migrate`")
    return _guard("backfilled", True, f"backfilled at {at}" if at else "no legacy files to backfill")


#: the name :func:`_differences` lists documents that could not be read under (never "no difference")
UNKNOWN = "unknown documents"


def _differences(lag_only: bool, s: config.Settings) -> tuple[dict[str, list[str]], int]:
    """Keys that differ in two reports in a row: ({table: [kind key, ...]}, total).

    lag_only: count only what the files lack or hold differently (not rows the database lacks).
    A legacy document that could not be read is listed under :data:`UNKNOWN` (its records were not
    compared: not an agreement).
    """
    from ..transfer.rows import key_text
    from ..transfer.report import build_report

    def diffs() -> dict[str, set[tuple[str, tuple]]]:
        # each difference re-read under its document's lock: a key written in a loop (an agent's
        # context every tick) looks different in any two unlocked reads, and is not
        report = build_report(recheck=True, settings=s)
        out: dict[str, set[tuple[str, tuple]]] = {}
        for name, t in report.entities.items():
            kinds = [("missing in files", t.missing_in_files), ("different", t.different)]
            if not lag_only:
                kinds.append(("missing in db", t.missing_in_db))
            keys = {(kind, k) for kind, found in kinds for k in found}
            if keys:
                out[name] = keys
        if report.unknown:
            out[UNKNOWN] = {("could not be read", (f"{u['path']} ({u['reason']})",)) for u in report.unknown.entries()}
            unknown_entities[:] = report.unknown.entities()
        return out

    unknown_entities: list[str] = []

    first = diffs()
    listed = {n: [f"{kind}: {key_text(k)}" for kind, k in sorted(keys)] for n, keys in sorted(first.items())}
    if unknown_entities:
        listed[UNKNOWN + " of"] = unknown_entities
    return listed, sum(len(v) for n, v in listed.items() if n != UNKNOWN + " of")


def _summary(listed: dict[str, list[str]], limit: int = 3) -> str:
    parts = []
    for name, keys in listed.items():
        more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
        parts.append(f"{name}: {', '.join(keys[:limit])}{more}")
    return "; ".join(parts)


def _report_consistent(from_phase: int, s: config.Settings) -> dict[str, Any]:
    fix_side = "db" if from_phase <= 2 else "files"
    listed, total = _differences(lag_only=False, s=s)
    if UNKNOWN in listed:
        from ..domain.authority import restore_advice

        return _guard("report_consistent", False, f"`federation report` could not read every legacy document "
                      f"(unknown is not consistent): {_summary(listed)}",
                      f"{restore_advice(from_phase, listed.get(UNKNOWN + ' of', []))}; check `federation report` "
                      "exits 0, and retry")
    if total:
        return _guard("report_consistent", False, f"`federation report` finds {total} difference(s): "
                      f"{_summary(listed)}", f"run `federation sync --to {fix_side}` (the phase-{from_phase} "
                      "authority), check `federation report` exits 0, and retry")
    return _guard("report_consistent", True, "`federation report`: files and database agree")


def _phase_four_began(root: Path, flag: _flag.Flag | None) -> datetime | None:
    for entry in reversed(_flag.history(root)):
        if entry.get("to") == 4:
            return _io.parse_iso(entry.get("at"))
    return _io.parse_iso(flag.set_at) if flag is not None and flag.phase == 4 else None


def _files_current(s: config.Settings, target: int, flag: _flag.Flag | None) -> dict[str, Any]:
    root = s.root
    if target == 3:
        # Phase 3 keeps the database authoritative, so what phase 4 wrote stays in view: a sync
        # to the files since phase 4 began is enough (under live phase-4 writes a report never
        # agrees). What was written between that sync and this step is caught up by the next
        # `sync --to files`, in phase 3, before stepping to 2 (the runbook's step).
        began = _phase_four_began(root, flag)
        for entry in reversed(_flag.syncs(root)):
            at = _io.parse_iso(entry.get("at"))
            if entry.get("to") == "files" and at is not None and (began is None or at > began):
                return _guard("files_current", True, f"`federation sync --to files` completed at {entry['at']}, "
                              "after the fleet entered phase 4")
    listed, total = _differences(lag_only=True, s=s)
    if UNKNOWN in listed:
        from ..domain.authority import restore_advice

        return _guard("files_current", False, f"legacy documents could not be read, so the files cannot be shown "
                      f"current: {_summary(listed)}", f"{restore_advice(3, listed.get(UNKNOWN + ' of', []))}, "
                      "and retry")
    if total:
        then = "" if target == 3 else ", then step back to 3 first (files written again) and sync once more"
        return _guard("files_current", False, f"the files lag the database (phase 4 no longer wrote them): "
                      f"{total} record(s), {_summary(listed)}", f"run `federation sync --to files`{then}, and retry")
    return _guard("files_current", True, "the files hold everything the database has")


# ---------------------------------------------------------------------------
# the guards of one step


def evidence_since(since: datetime | None, flag: _flag.Flag | None,
                   caught_up: datetime | None = None) -> tuple[datetime | None, str]:
    """(the start of the counted evidence, what that start is: "" for an explicit one).

    An explicit *since* wins; else the flag's ``set_at`` -- a step is judged on what the current phase
    showed, not on a mismatch an earlier phase had and a repair removed -- or, when later, *caught_up*:
    the end of the last clean ``migrate`` or ``sync --to db`` (the runbook's catch-up in phase 2: records
    written in phase 1 after the first migrate differ until it ran); else None (the last 24 hours).
    """
    if since is not None:
        return _io.aware(since), ""
    entered = _io.parse_iso(flag.set_at) if flag is not None else None
    if entered is None:
        return None, ""
    if caught_up is not None and caught_up > entered:
        return caught_up, "when the catch-up `migrate` or `sync --to db` ended"
    return entered, "entered"


def _caught_up(s: config.Settings) -> datetime | None:
    """When the database last received every record of the files, or None (none recorded, no database)."""
    from ..errors import FederationError
    from ..stores.database import database_exists
    from ..stores.sqlstore import get_store

    try:
        if not database_exists(s, ask_server=True):
            return None
        return _io.parse_iso(get_store(s).meta("caught_up_at") or "")
    except FederationError:
        return None


def step_guards(from_phase: int, target: int, *, min_rate: float = DEFAULT_MIN_RATE,
                min_comparisons: int = DEFAULT_MIN_COMPARISONS, since: datetime | None = None,
                flag: _flag.Flag | None = None, settings: config.Settings) -> list[dict[str, Any]]:
    """The guards of the step *from_phase* -> *target*, each evaluated, on *settings*' federation."""
    target = _flag.check_phase(target)
    s = settings
    out: list[dict[str, Any]] = []
    if target == from_phase:
        # the database side of 3 and 4 needs a backfill whatever the phase in effect (an unflagged
        # fleet, or one forced there): confirming such a phase is refused like entering it
        if target in (3, 4):
            out.append(_checked("backfilled", "run `federation migrate` first", lambda: _backfilled(s)))
        return out
    if target in (3, 4):
        out.append(_checked("backfilled", "run `federation migrate` first", lambda: _backfilled(s)))
    if target in (3, 4) and target > from_phase:
        out.append(_checked("report_consistent", "force the step", lambda: _report_consistent(from_phase, s)))
        since, start = evidence_since(since, flag, _caught_up(s) if from_phase == 2 else None)
        since, until = _status.window(since, None)
        t = _status.totals(since, until, settings=s)
        measured = f"{t['comparisons']} comparison(s), {t['mismatches']} mismatch(es) since {_io.iso(since)}" + \
            (f" (when phase {from_phase} was entered)" if start == "entered" else f" ({start})" if start else "")
        low = t["rate"] is not None and t["rate"] < min_rate
        out.append(_guard("consistency_rate", not low,
                          f"rate {t['rate']:.6f} < {min_rate} ({measured})" if low else
                          f"rate {'-' if t['rate'] is None else format(t['rate'], '.6f')} >= {min_rate} ({measured})",
                          "list them with `federation rollout mismatches`, repair with "
                          f"`{repair_command(from_phase)}` (the phase-{from_phase} authority), then measure "
                          "again from after the repair (`--since`)"))
        few = t["comparisons"] < min_comparisons
        out.append(_guard("enough_comparisons", not few,
                          f"{measured}; {min_comparisons} needed",
                          f"let the fleet serve reads in phase {from_phase} (shadow reads: `--sample`) until "
                          f"{min_comparisons} comparisons are counted (`federation rollout status`)"))
    fleet = _status.fleet(settings=s)
    if target in (2, 3) and target > from_phase:
        out.append(_unannounced_writers(fleet))
    if target == 4 or target in (1, 2):
        if target == 4:
            bad = [p for p in fleet if p["alive"] and p.get("phase") in (1, 2)]
            what = "phase 1 or 2 (they read the files phase 4 stops writing)"
        else:
            bad = [p for p in fleet if p["alive"] and p.get("phase") == 4]
            what = "phase 4 (it does not write the files phase 1 or 2 reads)"
        names = ", ".join(_fleet.describe(p) for p in bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        out.append(_guard("fleet_mix", not bad,
                          f"{len(bad)} live process(es) in {what}: {names}" if bad else
                          f"no live process in {what.split(' (')[0]}",
                          "move them first (a pinned process: change FEDERATION_PHASE / FEDERATION_USE_DB in its "
                          "environment and restart it; one following the flag: step through phase 3) and wait "
                          "until `federation rollout status` shows it"))
    if target == 4:
        out.append(_adopted_code(fleet))
    if from_phase == 4 and target < 4:
        out.append(_checked("files_current", "run `federation sync --to files`",
                            lambda: _files_current(s, target, flag)))
    return out


#: a torn read this recent (seconds) means a writer outside the fleet is still at work
UNANNOUNCED_WINDOW = 120


def _unannounced_writers(fleet: list[dict]) -> dict[str, Any]:
    """Steps up to 2 and 3 are refused while a legacy document is rewritten by a process outside the fleet:
    every process of the fleet writes under the documents' locks, so a half-written file read under the
    lock was written by someone else (whose writes the database never sees, and whose whole-document
    writes undo the fleet's)."""
    now = _io.utcnow()
    recent = []
    docs: dict[str, int] = {}
    for p in fleet:
        seen = False
        for at, counted in (("torn_at", "torn_documents"), ("outside_at", "outside_documents")):
            when = _io.parse_iso(p.get(at) or "")
            if when is not None and (now - when).total_seconds() <= UNANNOUNCED_WINDOW:
                seen = True
                for name, n in (p.get(counted) or {}).items():
                    docs[name] = docs.get(name, 0) + n
        if seen:
            recent.append(p)
    where = ", ".join(f"{name} ({n})" for name, n in sorted(docs.items(), key=lambda kv: -kv[1])[:5])
    return _guard("unannounced_writers", not recent,
                  f"{len(recent)} process(es) saw legacy files half-written or rewritten by no process of the fleet "
                  f"in the last {UNANNOUNCED_WINDOW} s (a writer outside the fleet): "
                  f"{where or ', '.join(_fleet.describe(p) for p in recent[:5])}"
                  if recent else f"no legacy file seen half-written or rewritten outside the fleet in the last "
                                 f"{UNANNOUNCED_WINDOW} s",
                  "find the process that writes these files without the shim (it is not in `federation rollout "
                  "status`), adopt it (docs/adopting.md) or stop it; the guard passes "
                  f"{UNANNOUNCED_WINDOW} s after the last such file is seen")


def _adopted_code(fleet: list[dict]) -> dict[str, Any]:
    """Phase 4 is refused while a process runs code adopted with federation.adopt: its file code still runs."""
    live = [p for p in fleet if p["alive"] and p.get("adopted")]
    names = ", ".join(_fleet.describe(p) for p in live[:5]) + (f" and {len(live) - 5} more" if len(live) > 5 else "")
    return _guard("adopted_code", not live,
                  f"{len(live)} live process(es) run adopted code, whose functions write the legacy files: {names}"
                  if live else "no live process runs adopted code",
                  "finish the adoption first: replace the adopted functions' calls by federation.* (the "
                  "federation's API, docs/adopting.md), restart those processes, and retry")


def guards(target_phase: int, min_rate: float = DEFAULT_MIN_RATE, min_comparisons: int = DEFAULT_MIN_COMPARISONS,
           since: datetime | None = None, *, settings: config.Settings) -> list[dict[str, Any]]:
    """The guards ``rollout set TARGET`` would check now, each ``{"name", "ok", "detail", "fix"}`` (read-only),
    on *settings*' federation."""
    s = settings
    from_phase, flag, _ = current_phase(s.root, settings=s)
    return step_guards(from_phase, target_phase, min_rate=min_rate, min_comparisons=min_comparisons, since=since,
                       flag=flag, settings=s)


@dataclasses.dataclass
class SetResult:
    """What ``rollout set`` did."""

    from_phase: int
    to_phase: int
    changed: bool
    guards: list[dict[str, Any]]
    forced: bool
    flag: _flag.Flag | None
    replaced_problem: str | None = None

    @property
    def refused(self) -> list[dict[str, Any]]:
        return [g for g in self.guards if not g["ok"]]

    @property
    def applied(self) -> bool:
        return not self.refused or self.forced

    def to_json(self) -> dict[str, Any]:
        return {"from": self.from_phase, "to": self.to_phase, "changed": self.changed, "applied": self.applied,
                "forced": self.forced, "guards": self.guards,
                "flag": self.flag.to_json() if self.flag else None,
                **({"replaced_unreadable_flag": self.replaced_problem} if self.replaced_problem else {})}


def set_phase(target: int, *, sample: float | None = None, min_rate: float = DEFAULT_MIN_RATE,
              min_comparisons: int = DEFAULT_MIN_COMPARISONS, since: datetime | None = None, force: bool = False,
              reason: str | None = None, by: str | None = None, settings: config.Settings) -> SetResult:
    """Set the live flag of *settings*' federation to *target* when the
    guards allow it (or *force*), recording the change.

    Raises :class:`ConfigError` for a bad phase, sample or a force without a reason.
    """
    target = _flag.check_phase(target)
    if sample is not None:
        sample = _flag.check_sample(sample)
    if not (0.0 <= min_rate <= 1.0):
        raise ConfigError(f"min_rate {min_rate!r} is not accepted: use a number from 0.0 to 1.0")
    if force and not (reason and reason.strip()):
        raise ConfigError("--force needs --reason: say why the guards are overridden (it is recorded)")
    s = settings
    root = s.root
    with _io.control_lock(root):  # one operator's step at a time: guards and write see the same flag
        # a step to 1 or 2 works with the database down: the phase it leaves is not asked of it
        from_phase, flag, problem = current_phase(root, ask_db=target in (3, 4), settings=s)
        if sample is not None:
            new_sample = sample
        elif flag is not None:
            new_sample = flag.sample
        else:  # none set yet, or an unreadable record: the history's last, else the default
            recorded = _flag.last_recorded_sample(root) if problem else None
            new_sample = _flag.DEFAULT_SAMPLE if recorded is None else recorded
        if flag is not None and flag.phase == target and flag.sample == new_sample:
            # 3 and 4: still refused when not backfilled
            checks = step_guards(from_phase, target, flag=flag, settings=s)
            return SetResult(from_phase, target, False, checks, force, flag)
        checks = step_guards(from_phase, target, min_rate=min_rate, min_comparisons=min_comparisons, since=since,
                             flag=flag, settings=s)
        result = SetResult(from_phase, target, False, checks, force, flag, problem)
        if not result.applied:
            log.warning("rollout_set_refused", phase=target, previous=from_phase,
                        guards=[g["name"] for g in result.refused])
            return result
        at = _io.iso(_io.utcnow())
        by = by or _io.who()
        new = _flag.Flag(phase=target, sample=new_sample, set_at=at, set_by=by,
                         reason=reason.strip() if reason else None, forced=bool(force))
        _flag.write_flag(root, new)
        entry = {"at": at, "from": from_phase, "to": target, "by": by, "reason": new.reason, "forced": new.forced,
                 "sample": new_sample}
        if result.refused:
            entry["overridden"] = [g["name"] for g in result.refused]
        if problem:
            entry["replaced_unreadable_flag"] = problem
        _flag.append_history(root, entry)
        log.info("rollout_set", phase=target, previous=from_phase, sample=new_sample, by=by, forced=new.forced,
                 overridden=entry.get("overridden"))
        result.changed, result.flag = True, new
        return result
