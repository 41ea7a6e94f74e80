"""``federation rollout``: the live flag and the fleet (:mod:`federation.rollout`)."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from datetime import datetime

from .. import config
from ._base import _columns, _settings, common, main


# ---------------------------------------------------------------------------
# the live flag and the fleet (federation.rollout)


def _record_sync(s: config.Settings, to: str, changes: int, forced: bool = False, reason: str | None = None) -> None:
    """Note a completed sync in control/ (the guard of a step back from phase 4 asks for one)."""
    from ..rollout import record_sync

    try:
        record_sync(s.root, to, changes, forced=forced, reason=reason)
    except OSError as exc:
        click.echo(f"warning: the sync is done but could not be recorded for `rollout set` ({exc})", err=True)


def _moment(text: str | None) -> datetime | None:
    """An ISO 8601 time, or a duration back from now (90m, 12h, 7d, 2w): the grammar of ``domain.moments``."""
    from ..domain.moments import parse_moment
    from ..errors import ValidationError

    if text is None:
        return None
    try:
        return parse_moment(text)
    except ValidationError as exc:
        raise click.BadParameter(str(exc), param_hint="--since") from None


_SINCE_HELP = "Start of the window: an ISO 8601 time or a duration back from now (30m, 12h, 7d); default 24h."


@main.group()
def rollout() -> None:
    """The live flag the fleet follows, the fleet, and the counted consistency."""


@rollout.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--since", "since", metavar="WHEN", help=_SINCE_HELP)
@click.option("--expect-phase", "expect", type=click.Choice(["1", "2", "3", "4"]), metavar="N",
              help="Exit 0 only when every live process is in phase N (1 otherwise, naming the others): "
                   "for scripts that wait for the fleet to follow a step.")
@common
def rollout_status(as_json: bool, since: str | None, expect: str | None) -> None:
    """Show the live flag, every process of the fleet with its phase, and the counted consistency."""
    from .. import rollout as control

    s = _settings()
    data = control.status(since=_moment(since), settings=s)
    behind = [p for p in data["fleet"] if p["alive"] and p["phase"] != int(expect)] if expect else []
    if as_json:  # strict JSON: the readers let no NaN or Infinity through from the files
        click.echo(json.dumps(data, indent=2, allow_nan=False))
        sys.exit(1 if behind else 0)
    flag = data["flag"]
    if data.get("flag_error"):
        click.echo(f"flag:    UNREADABLE: {data['flag_error']} (processes keep their phase; "
                   "`federation rollout set PHASE` rewrites it)")
    elif flag is None:
        from ..rollout import current_phase

        click.echo(f"flag:    not set (unpinned processes run the default: phase "
                   f"{current_phase(s.root, settings=s)[0]}; phase 1 while "
                   "legacy files were never backfilled into the database, else 3)")
    else:
        click.echo(f"flag:    phase {flag['phase']}, sample {flag['sample']}, set {flag['set_at']} by "
                   f"{flag['set_by']}" + (f": {flag['reason']}" if flag["reason"] else ""))
    for bad in data.get("control_errors", ()):
        click.echo(f"skipped: {bad['path']}: {bad['reason']}")
    fleet = data["fleet"]
    summary = data["fleet_summary"]
    every = f"; every live process in phase {summary['all_in']}" if summary["all_in"] is not None else \
        ("; phases " + ", ".join(f"{n} in {ph}" for ph, n in summary["phases"].items()) if summary["live"] else "")
    click.echo(f"fleet:   {summary['live']} live, {summary['gone']} gone{every}")
    if fleet:
        _columns([(p["host"], p["pid"], p["agent"] or (f"({p['program']})" if p.get("program") else "-"), p["phase"],
                   "pinned (env)" if p["source"] == "env" else p["source"], p["version"], p["last_seen"],
                   "live" if p["alive"] else "GONE") for p in fleet],
                 ("host", "pid", "agent", "phase", "source", "version", "last_seen", "state"))
    for p in fleet:
        if p.get("adopted") and p["alive"]:
            click.echo(f"adopted: {p['host']}:{p['pid']} runs {', '.join(p['adopted'])} through federation.adopt")
        if p.get("torn_reads"):
            docs = ", ".join(f"{name} ({n})" for name, n in (p.get("torn_documents") or {}).items())
            click.echo(f"WARNING: {p['host']}:{p['pid']} saw {p['torn_reads']} legacy file(s) half-written: a process "
                       "writes the files outside the shim (every writer must run through it before phase 2)"
                       + (f"; last at {p['torn_at']}: {docs}" if p.get("torn_at") else ""))
        if p.get("outside_writes"):
            docs = ", ".join(f"{name} ({n})" for name, n in (p.get("outside_documents") or {}).items())
            click.echo(f"WARNING: {p['host']}:{p['pid']} found {p['outside_writes']} legacy file write(s) that no "
                       "process of the fleet made: a process writes the files outside the shim (every writer "
                       "must run through it before phase 2)"
                       + (f"; last at {p['outside_at']}: {docs}" if p.get("outside_at") else ""))
    for four, files in control.unsafe_mix(fleet):
        click.echo(f"UNSAFE MIX: {four['host']}:{four['pid']} in phase 4 with {files['host']}:{files['pid']} "
                   f"in phase {files['phase']}")
    window = data["window"]
    click.echo(f"consistency from {window['since']} to {window['until']}:")

    def ms(v: dict) -> str:
        return "-" if v["p50"] is None else f"{v['p50']:.3g}/{v['p99']:.3g}"

    rows = [(e, c["comparisons"], c["mismatches"], c["errors"], "-" if c["rate"] is None else f"{c['rate']:.6f}",
             ms(c["files_ms"]), ms(c["db_ms"])) for e, c in data["consistency"].items()]
    _columns(rows or [("(no comparisons counted)", "", "", "", "", "", "")],
             ("entity", "comparisons", "mismatches", "errors", "rate", "files ms p50/p99", "db ms p50/p99"))
    if data["history"]:
        click.echo("history (latest last):")
        for h in data["history"][-10:]:
            click.echo(f"  {h['at']}  {h['from']} -> {h['to']}  by {h['by']}" + ("  FORCED" if h["forced"] else "")
                       + (f"  {h['reason']}" if h["reason"] else ""))
    if expect:
        if behind:
            click.echo(f"NOT every live process is in phase {expect}: " + ", ".join(
                f"{p['host']}:{p['pid']} in {p['phase']}" for p in behind[:10]), err=True)
            sys.exit(1)
        click.echo(f"every live process is in phase {expect}")


@rollout.command("mismatches")
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True, help="How many, newest first.")
@click.option("--entity", metavar="NAME", help="Only this entity's (votes, messages, context...).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON array.")
@common
def rollout_mismatches(limit: int, entity: str | None, as_json: bool) -> None:
    """List the fleet's recent mismatches (newest first), each with its field-level diff.

    The shim records every shadow comparison whose sides differed; the fleet
    keeps the last 1,000.  `rollout set` refused by `consistency_rate` points here.
    """
    from .. import rollout as control

    s = _settings()
    records = control.recent_mismatches(1000, settings=s)
    if entity:
        records = [r for r in records if r["entity"] == entity]
    records = records[:limit]
    if as_json:
        click.echo(json.dumps(records, indent=2))
        return
    if not records:
        click.echo("no mismatches recorded" + (f" for {entity}" if entity else ""))
        return
    for r in records:
        click.echo(f"{r['at']}  {r['entity']} {r['key']}  phase {r['phase']} ({r['authority']} authoritative)  "
                   f"{r['op']}  {r['host']}:{r['pid']}")
        diff = r["diff"] if isinstance(r["diff"], list) else [r["diff"]]
        for d in diff[:5]:
            click.echo(f"    {json.dumps(d)}")
    from ..domain.authority import repair_command
    from ..rollout import fleet_phase

    click.echo(f"repair: `{repair_command(fleet_phase(s))}` (the safe direction in the current phase), then "
               "`federation rollout set N --since <after the repair>`")


@rollout.command("set")
@click.argument("phase", metavar="PHASE", type=click.Choice(["1", "2", "3", "4"]))
@click.option("--sample", type=click.FloatRange(0.0, 1.0), help="The fleet's shadow sample (0.0-1.0).")
@click.option("--min-rate", type=click.FloatRange(0.0, 1.0), default=0.999, show_default=True,
              help="Lowest counted consistency rate over the window that lets the fleet step up to 3 or 4.")
@click.option("--min-comparisons", type=click.IntRange(0), default=100, show_default=True,
              help="Fewest counted comparisons over the window that let the fleet step up to 3 or 4.")
@click.option("--since", "since", metavar="WHEN",
              help="Start of the counted evidence, exact to the second: an ISO 8601 time or a duration back from "
                   "now (30m, 12h); default: when the current phase was entered (the flag's set_at; 24h without "
                   "a flag).")
@click.option("--force", is_flag=True, help="Override the guards (needs --reason; recorded).")
@click.option("--reason", metavar="TEXT", help="Why (recorded in the history).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@common
def rollout_set(phase: str, sample: float | None, min_rate: float, min_comparisons: int, since: str | None,
                force: bool, reason: str | None, as_json: bool) -> None:
    """Set the live flag: every process not pinned by its environment follows within seconds.

    PHASE: 1 files only, 2 files first, 3 database first, 4 database only.
    Exit 0 changed (or already so); 1 refused by a guard (each named, with what
    to run); 2 usage error.  Works while the database is unreachable for steps
    that need no database check (`rollout set 1` from phase 2 or 3).
    """
    from .. import rollout as control

    result = control.set_phase(int(phase), sample=sample, min_rate=min_rate, min_comparisons=min_comparisons,
                               since=_moment(since), force=force, reason=reason, settings=_settings())
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
        sys.exit(0 if result.applied else 1)
    if result.replaced_problem:
        click.echo(f"note: the flag record was unreadable ({result.replaced_problem}); "
                   f"taken as phase {result.from_phase} (the history's last)")
    for g in result.guards:
        click.echo(f"  [{'ok' if g['ok'] else 'FAILED'}] {g['name']}: {g['detail']}")
        if not g["ok"]:
            click.echo(f"      fix: {g['fix']}")
    if not result.applied:
        names = ", ".join(g["name"] for g in result.refused)
        click.echo(f"refused: phase {result.from_phase} -> {result.to_phase} ({names}); "
                   "`--force --reason TEXT` overrides (recorded)", err=True)
        sys.exit(1)
    if not result.changed:
        click.echo(f"already so: phase {result.to_phase}, sample {result.flag.sample}")
        return
    forced = " (FORCED past: " + ", ".join(g["name"] for g in result.refused) + ")" if result.refused else ""
    click.echo(f"live flag: phase {result.from_phase} -> {result.to_phase}, sample {result.flag.sample}{forced}; "
               "unpinned processes follow within 5 s (`federation rollout status`)")
