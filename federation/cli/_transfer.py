"""``migrate``, ``report``, ``sync``, ``archive-legacy``: thin commands over :mod:`federation.transfer`."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from .. import config
from ..errors import ConfigError, FederationError
from ._base import _columns, _guard, _listing, _progress, _settings, common, main
from ._overview import MESSAGES_COMPARED
from ._rollout import _record_sync


# ---------------------------------------------------------------------------
# migration, report, repair, archive: thin commands over federation.transfer.migrate,
# .report, .sync and .archive




@main.command("migrate")
@click.option("--dry-run", is_flag=True, help="Read and count every file; write nothing, not even the database file.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--batch-size", type=click.IntRange(1), default=5000, show_default=True,
              help="Rows per write transaction.")
@click.option("--accept", "accept", multiple=True, metavar="PATH",
              help="Record that this file (listed as invalid or not imported) may stay out of the database, in "
                   "control/accepted.jsonl; needs --reason. Migrates nothing. Repeatable.")
@click.option("--reason", metavar="TEXT", help="Why the --accept files may stay out of the database.")
@common
def migrate_command(dry_run: bool, as_json: bool, batch_size: int, accept: tuple[str, ...],
                    reason: str | None) -> None:
    """Import every legacy file into the database and validate the row counts.

    Exit 0: all migrated and counts validated; 1: failure; 2: usage error;
    3: finished, but invalid files were skipped, or JSON documents the
    layout has no place for were not imported (each listed).  Idempotent;
    rows already in the database (a live dual-write's) are never overwritten.

    `--accept PATH --reason TEXT` records an operator's decision about a
    listed file: while its content is unchanged, migrate and doctor no
    longer fail on it (a changed file fails again).
    """
    from ..operations.accepted import settle
    from ..transfer.migrate import migrate

    s = _settings()
    if accept or reason is not None:
        _accept(s, accept, reason, dry_run, as_json)
        return
    if not dry_run:
        _hold_files_first(s)
    result = _guard(lambda: migrate(dry_run=dry_run, progress=_progress(as_json), batch_size=batch_size, settings=s))
    settle(s.root, result)  # the files an operator accepted, content unchanged, fail it no longer
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
    else:
        head = "dry run: nothing written; rows = rows the import would offer" if dry_run else "migrated"
        click.echo(f"{head} ({result.files} files under {s.root})")
        _columns([(t, c["files"], c["rows"]) for t, c in result.entities.items()], ("table", "files", "rows"))
        _listing("invalid files, skipped", [f"{i['path']}: {i['reason']}" for i in result.invalid])
        _listing("JSON documents the layout has no place for (NOT imported)",
                 [f"{n['path']}: {'?' if n['records'] is None else n['records']} records, {n['bytes']} bytes"
                  for n in result.not_imported])
        _listing("fields the schema has no place for (not imported)",
                 [f"{d['path']}: {d['field']}" for d in result.dropped_fields])
        _listing("accepted by an operator (content unchanged since), not imported",
                 [f"{a['path']}: {a['reason']} ({a['by']}, {a['at']})" for a in result.accepted])
        for table, keys in result.missing.items():
            _listing(f"{table}: file rows missing in the database", keys)
        left = " and documents not imported" if result.not_imported else ""
        if dry_run:
            verdict = {0: "ok: every file parsed",
                       3: f"invalid files{left} would be left out" if result.invalid else
                       "JSON documents the layout has no place for would not be imported"}[result.exit_code]
        else:
            verdict = {0: "ok: every file migrated, counts validated",
                       1: "FAILED: the database lacks rows the files have",
                       3: f"done, but invalid files{left} were left out" if result.invalid else
                       "done, but JSON documents the layout has no place for were not imported"}[result.exit_code]
        click.echo(verdict)
        if result.exit_code == 3:
            click.echo("repair each file and rerun, or accept it: `federation migrate --accept PATH --reason TEXT` "
                       "(docs/rollout-runbook.md)")
    sys.exit(result.exit_code)


def _accept(s: config.Settings, paths: tuple[str, ...], reason: str | None, dry_run: bool, as_json: bool) -> None:
    """``migrate --accept PATH --reason TEXT``: record the decisions, migrate nothing."""
    from ..operations.accepted import accept, settle
    from ..transfer.migrate import migrate

    if not paths:
        raise click.UsageError("--reason goes with --accept PATH")
    if reason is None or not reason.strip():
        raise click.UsageError("--accept needs --reason TEXT: why the file may stay out of the database")
    if dry_run:
        raise click.UsageError("--accept records a decision and --dry-run writes nothing: use one of them")
    listed = settle(s.root, _guard(lambda: migrate(dry_run=True, settings=s)))  # what is listed now: reads only
    records = [accept(s.root, path, reason, listed.invalid, listed.not_imported, listed.accepted) for path in paths]
    if as_json:
        click.echo(json.dumps({"accepted": records}, indent=2))
        return
    for record in records:
        click.echo(f"accepted {record['path']} ({record['listed_as']}, {record['bytes']} bytes, sha256 "
                   f"{record['sha256'][:12]}…): {record['reason']}")
    click.echo("recorded in control/accepted.jsonl; `federation migrate` and `federation doctor` no longer fail on "
               "these files while their content is unchanged")


def _hold_files_first(s: config.Settings) -> None:
    """Before a first migration with no flag set: set it to 1, what the unpinned fleet already runs.

    Unflagged processes serve the files while the database was never backfilled (an upgrade), and
    would step to phase 3 on their own the moment the migration marks it backfilled -- without the
    guards, and missing what agents wrote to the files during the import.  The flag keeps them in 1.
    """
    from .. import rollout as control
    from ..rollout import needs_backfill

    try:
        if control.read_flag(s.root) is not None:
            return
    except (FederationError, OSError):
        return  # an unreadable flag is the operator's to repair; the migration does not touch it
    # A database that cannot answer fails here, as the migration would: once, not once here and again there
    # (an unreachable server cost the operator its 30 s deadline twice before the error).
    if not needs_backfill(s):
        return
    result = control.set_phase(1, reason="federation migrate: the first backfill; the fleet stays on the files "
                                         "until `federation rollout set 2`", settings=s)
    if result.changed:
        click.echo("live flag: phase 1 (it was not set): unpinned processes keep serving the files after the "
                   "migration; `federation rollout set 2` is the next step", err=True)


#: `federation report`'s exit code when the database (or the files) cannot be opened or read
REPORT_CANNOT_READ = 3



@main.command("report")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--log", "log_file", type=click.Path(exists=True, dir_okay=False, path_type=str),
              help="Also summarise the shadow_mismatch / shadow_error events of this structlog JSON-lines file.")
@common
def report_command(as_json: bool, log_file: str | None) -> None:
    """Compare the file tree with the database, table by table.

    Each difference is re-read under its document's lock before it is
    reported (a write in flight is not one).  Exit 0 when they agree, 1 when
    they differ, 2 on a usage error, 3 when the database (or the files)
    cannot be opened or read, or a legacy document could not be read
    (unknown: never called consistent, and never repaired as if empty).
    """
    from ..rollout import summarise_log
    from ..transfer.report import build_report

    s = _settings()
    try:
        report = build_report(progress=_progress(as_json), recheck=True, settings=s)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - a database that cannot be opened is an answer: exit 3
        click.echo(f"error: cannot compare: {type(exc).__name__}: {exc}", err=True)
        sys.exit(REPORT_CANNOT_READ)
    summary = summarise_log(log_file, report, settings=s) if log_file else None
    if as_json:
        data = report.to_json()
        if not report.consistent:  # the commands that repair what was found, safe in the fleet's phase
            from ..domain.authority import repair_command, restore_command
            from ..rollout import fleet_phase

            phase = fleet_phase(s)
            data["repair"] = {"phase": phase, "differences": repair_command(phase) if report.differences else None,
                              "unknown": restore_command(phase, report.unknown.entities()) if report.unknown else None}
        if summary is not None:
            data["log"] = summary
        click.echo(json.dumps(data, indent=2))
        sys.exit(_report_code(report))
    rows = [(n, t.files, t.rows, len(t.missing_in_db), len(t.missing_in_files), len(t.different))
            for n, t in report.entities.items()]
    _columns(rows, ("table", "files", "rows", "missing_in_db", "missing_in_files", "different"))
    if "messages" in report.entities:
        click.echo(MESSAGES_COMPARED)
    for name, t in report.entities.items():
        if t.consistent:
            continue
        d = t.to_json()
        _listing(f"{name}: missing in the database", d["missing_in_db"], 10)
        _listing(f"{name}: missing in the files", d["missing_in_files"], 10)
        _listing(f"{name}: different", d["different"], 10)
        for diff in t.diffs:
            click.echo(f"    {diff['key']}  {diff['field']}: files={json.dumps(diff['files'])} "
                       f"db={json.dumps(diff['db'])}")
    _listing("invalid files (not compared)", [f"{i['path']}: {i['reason']}" for i in report.invalid])
    _listing("unknown: legacy documents that could not be read (their records not compared on either side)",
             [f"{u['path']}: {u['reason']}" for u in report.unknown.entries()])
    if summary is not None:
        click.echo(f"log {summary['path']}: {summary['events']} shadow events from {summary['first']} "
                   f"to {summary['last']}")
        _columns([(e, s["shadow_mismatch"], s["shadow_error"], s["keys"],
                   "-" if s["consistency_rate"] is None else f"{s['consistency_rate']:.4f}")
                  for e, s in summary["entities"].items()] or [("(none)", 0, 0, 0, "-")],
                 ("entity", "mismatches", "errors", "keys", "consistency"))
        if summary["consistency_rate"] is not None and summary["rate_source"] == "counted":
            click.echo(f"consistency rate over the period: {summary['consistency_rate']:.6f} "
                       f"({summary['mismatches']} mismatches in {summary['comparisons']} counted comparisons)")
        elif summary["consistency_rate"] is not None:
            click.echo(f"consistency rate over the period: {summary['consistency_rate']:.4f} "
                       "(share of records with no shadow event: no comparison was counted)")
    if report.consistent:
        click.echo("consistent")
    else:
        from ..domain.authority import AUTHORITY, repair_command, restore_advice
        from ..rollout import fleet_phase

        phase = fleet_phase(s)
        side = "the files are" if AUTHORITY[phase] == "files" else "the database is"
        if report.differences:
            click.echo(f"NOT consistent: {side} authoritative in phase {phase}; `{repair_command(phase)}` repairs "
                       "the differences" + (" (it leaves the unknown documents alone)" if report.unknown else ""))
        if report.unknown:
            click.echo(f"NOT consistent: {len(report.unknown.entries())} legacy document(s) could not be read "
                       f"(unknown, not empty); {side} authoritative in phase {phase}; to restore them: "
                       f"{restore_advice(phase, report.unknown.entities())}")
    sys.exit(_report_code(report))


def _report_code(report: Any) -> int:
    """0 consistent, 1 differences, 3 something could not be read (an unknown document wins over differences)."""
    return REPORT_CANNOT_READ if report.unknown else (0 if report.consistent else 1)



def _entity_names() -> tuple[str, ...]:
    from ..domain.entities import ENTITY_NAMES

    return ENTITY_NAMES


@main.command("sync")
@click.option("--to", "to", required=True, type=click.Choice(["files", "db"]),
              help="The side to rewrite so that it equals the other.")
@click.option("--dry-run", is_flag=True, help="List what would change; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--force", is_flag=True, help="Write over the side that is authoritative in the current phase "
                                            "(needs --reason; recorded in control/syncs.jsonl).")
@click.option("--reason", metavar="TEXT", help="Why the authoritative side is overwritten (with --force).")
@click.option("--only", "only", multiple=True, metavar="ENTITY",
              type=click.Choice(_entity_names()),
              help="Limit the sync to this entity (a table or a document kind; repeatable).")
@common
def sync_command(to: str, dry_run: bool, as_json: bool, force: bool, reason: str | None,
                 only: tuple[str, ...]) -> None:
    """Rewrite one side where it differs from the other.

    Only the side that is not authoritative in the fleet's current phase: the
    database in phases 1-2 (`--to db`), the files in phases 3-4 (`--to files`).
    The other direction is refused unless `--force --reason TEXT`.
    A legacy document that cannot be read is unknown, never empty: its records
    are left alone on both sides and listed ("not synced: unknown"); only
    `--to files --only ENTITY` rebuilds those of ENTITY from the database.
    Exit 0 done, 1 failure or refused, 2 usage, 3 done except the unknown documents listed.
    """
    from ..rollout import fleet_phase
    from ..transfer.sync import sync

    if reason is not None and not force:
        raise click.UsageError("--reason goes with --force")
    s = _settings()
    # the fleet's phase decides which side is authoritative: the repair never writes over it unforced
    result = _guard(lambda: sync(to, dry_run=dry_run, force=force, reason=reason, settings=s,
                                 phase=None if dry_run else fleet_phase(s), only=only))
    if not dry_run:
        _record_sync(s, to, len(result.changes), forced=force, reason=reason)
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
        sys.exit(REPORT_CANNOT_READ if result.unknown else 0)
    for change in result.changes:
        click.echo(str(change))
    verb = "would change" if dry_run else "changed"
    click.echo(f"{verb} {len(result.changes)} {'file' if to == 'files' else 'row'}(s) on the {to} side")
    if result.unknown:
        _listing("not synced: unknown (could not be read; left as they are on both sides)",
                 [f"{u['path']}: {u['reason']}" for u in result.unknown])
        sys.exit(REPORT_CANNOT_READ)


@main.command("archive-legacy")
@click.option("--to", "dest", required=True, metavar="FILE.tar.gz", help="The archive to write (must not exist).")
@common
def archive_command(dest: str) -> None:
    """Archive the legacy tree, verify the archive, then remove the files (phase 4).

    Refuses (exit 1) unless the consistency report says files and database agree.
    """
    from ..rollout import fleet_phase
    from ..transfer.archive import archive_legacy

    s = _settings()
    result = _guard(lambda: archive_legacy(dest, settings=s, phase=fleet_phase(s)))
    click.echo(f"archived {result.files} files ({result.bytes} bytes) to {result.archive}, verified; "
               f"removed {result.removed}")
    _listing("kept (changed after they were archived)", result.kept)
    _listing("archived byte for byte without comparison (could not be read)",
             [f"{u['path']}: {u['reason']}" for u in result.unread])
    _listing("left in place, neither archived nor removed (not a regular file; never followed)",
             [f"{u['path']}: {u['reason']}" for u in result.left])
    if result.kept:
        sys.exit(1)
