"""The ``federation`` command line.

Every command takes ``--root`` and ``--db``, which win over the
environment.  Library errors become one clean line on stderr and exit 1
(usage errors exit 2), never a traceback.

Each invocation builds its :class:`~federation.config.Settings` once (the
environment with ``--root``/``--db`` on top) and hands them to the command it
runs (``settings=``).  The same values also stand as overrides while the command
runs -- the library's per-call lookups (the file side of ``core``, the phase of a
shimmed call) still read the configured federation -- and are dropped when it
returns, so nothing is left set in the process.
"""

from __future__ import annotations

import contextlib
import functools
import json
import sys
from typing import TYPE_CHECKING, Any, Callable

import click

if TYPE_CHECKING:
    from datetime import datetime

from . import config
from .errors import ConfigError, FederationError


def _option_values(root: str | None, db: str | None) -> dict[str, str]:
    """The variables ``--root`` and ``--db`` stand for (they win over the environment)."""
    values = {}
    if root:
        values["FEDERATION_ROOT"] = root
    if db:
        if db.startswith(("postgresql://", "postgres://")):
            values["FEDERATION_DB_URL"] = db
        else:
            values["FEDERATION_DB"] = db
    return values


#: where the invocation's settings are kept in click's context (its ``meta`` is shared by sub-contexts)
_SETTINGS = "federation.settings"


def _settings() -> config.Settings:
    """The settings this invocation was given (built once by :func:`common`)."""
    return click.get_current_context().meta[_SETTINGS]


def common(fn: Callable) -> Callable:
    """Add --root/--db, build the invocation's settings, set up logging, turn errors into clean exits."""

    @click.option("--db", "db", metavar="PATH", help="SQLite file, or a postgresql:// URL (wins over the environment).")
    @click.option("--root", "root", metavar="DIR", help="Root of the legacy file tree (wins over FEDERATION_ROOT).")
    @click.option("-v", "--verbose", is_flag=True,
                  help="On a terminal, show every log event (by default only warnings and errors).")
    @functools.wraps(fn)
    def wrapper(root: str | None, db: str | None, verbose: bool, **kwargs: Any) -> Any:
        from ._logging import configure

        configure(verbose=verbose)
        values = _option_values(root, db)
        try:
            s = config.settings_with(values)
        except ConfigError as exc:
            raise click.UsageError(str(exc)) from None
        _check_root(s.root, given=bool(root))
        click.get_current_context().meta[_ROOT_GIVEN] = bool(root)
        click.get_current_context().meta[_SETTINGS] = s
        try:
            with config.override(**values):  # for the per-call lookups only; gone when the command returns
                return fn(**kwargs)
        except ConfigError as exc:
            raise click.UsageError(str(exc)) from None
        except BrokenPipeError:
            _reader_gone()
        except (FederationError, OSError) as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)

    return wrapper


def _reader_gone() -> None:
    """The reader of stdout went away (`federation report | head -1`): what it wanted it has; end quietly
    (exit 0), with stdout pointed at /dev/null so that the interpreter's last flush raises nothing."""
    import os

    with contextlib.suppress(OSError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    sys.exit(0)


#: commands that read or change an existing federation: a root that does not exist is a mistyped one
_NEEDS_ROOT = {"migrate", "report", "sync", "doctor", "archive-legacy", "rollout", "restore"}


def _check_root(root: Any, given: bool) -> None:
    """A usage error (exit 2, nothing created) when this command needs the root and it is not a folder."""
    ctx = click.get_current_context()
    names = {c.info_name for c in _contexts(ctx)}
    if not names & _NEEDS_ROOT or root.is_dir():
        return
    where = "--root" if given else "FEDERATION_ROOT (or the default root)"
    what = "is not a folder" if root.exists() else "does not exist"
    raise click.UsageError(f"the federation root {root} ({where}) {what}: nothing was read or created; "
                           "check the path")


def _contexts(ctx: click.Context | None) -> list[click.Context]:
    out = []
    while ctx is not None:
        out.append(ctx)
        ctx = ctx.parent
    return out


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="federation")
def main() -> None:
    """Shared state for a federation of cooperating AI agents."""


def status_data(settings: config.Settings | None = None) -> dict:
    """What ``federation status`` shows, as a dict (of *settings*' federation; default: the configured one)."""
    from .rollout import current_phase
    from .stores.files import Tree, has_legacy_data

    s = settings or config.settings()
    # "phase": what the unpinned fleet runs (the live flag, else the root's default); "pinned_phase":
    # this process's own pin (FEDERATION_PHASE / FEDERATION_USE_DB), which does not change the fleet's
    fleet, flag, problem = current_phase(s.root, settings=s)
    data: dict[str, Any] = {
        "root": str(s.root),
        "database": s.db_display,
        "engine": s.engine,
        "use_db": s.use_db,
        "phase": fleet,
        "phase_source": "flag" if flag is not None else "flag unreadable" if problem else "default",
        "pinned_phase": s.effective_phase if s.phase_pinned else None,
        "shadow_sample": s.shadow_sample,
        "legacy_files": has_legacy_data(Tree(s.root)),
    }
    if problem:
        data["flag_error"] = problem
    from .stores.database import database_exists

    if database_exists(s, ask_server=True):
        from .stores.sqlstore import get_store

        store = get_store(s)
        data["tables"] = store.counts()
        data["backfilled_at"] = store.meta("backfilled_at")
    else:
        data["tables"] = None
    return data


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@common
def status(as_json: bool) -> None:
    """Show the root, the database, the phase and row counts per table."""
    data = status_data(_settings())
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    phase_names = {1: "1 (files only)", 2: "2 (files first, database shadow)",
                   3: "3 (database first, files shadow)", 4: "4 (database only)"}
    click.echo(f"root:      {data['root']}")
    click.echo(f"database:  {data['database']} ({data['engine']})")
    source = {"flag": "the live flag", "default": "no flag set: the root's default",
              "flag unreadable": "the live flag is UNREADABLE: its last recorded phase, else the default"}
    click.echo(f"phase:     {phase_names[data['phase']]}: what unpinned processes run "
               f"({source[data['phase_source']]})")
    if data.get("flag_error"):
        click.echo(f"           {data['flag_error']}")
    pin = data["pinned_phase"]
    click.echo(f"pinned:    {phase_names[pin]}: this shell's own FEDERATION_PHASE / FEDERATION_USE_DB" if pin
               else "pinned:    no (this shell follows the flag)")
    click.echo(f"legacy files present: {'yes' if data['legacy_files'] else 'no'}")
    if data["tables"] is None:
        click.echo("tables:    (database not created yet)")
        return
    click.echo(f"backfilled: {data['backfilled_at'] or 'never'}")
    width = max(len(t) for t in data["tables"])
    click.echo(f"{'table'.ljust(width)}  rows")
    for table, count in data["tables"].items():
        click.echo(f"{table.ljust(width)}  {count}")


@main.command()
@click.option("--agents", default=3, show_default=True, type=click.IntRange(2, 50), help="How many agents.")
@common
def demo(agents: int) -> None:
    """Run a few agents' operations through the shim, then show the status."""
    from . import context, governance, messaging

    names = [f"agent-{i}" for i in range(1, agents + 1)]
    lead = names[0]
    for name in names:
        context.heartbeat(name)
        context.set_context(name, f"{name} is reviewing the storage migration")
        context.set_expertise(name, ["federation", f"topic-{name[-1]}"])
        context.set_profile(name, default_role="reviewer", traits={"careful": True})
    poll = governance.create_poll(lead, "Advance the rollout to phase 4?", ["yes", "not yet"])
    for i, name in enumerate(names):
        governance.vote(poll, name, "yes" if i % 3 else "not yet")
        messaging.send_message(lead, name, f"please review the plan, {name}") if name != lead else None
    session = governance.create_session(lead, "Storage migration", "Move the federation to the database")
    for name in names[1:]:
        governance.assign_role(session, name, "reviewer", subtask="check the report")
    governance.attach_artifact(session, "plan", "docs/migration-plan.md")
    governance.review_artifact(session, "plan", names[-1], "approved", "looks right")
    received = sum(len(messaging.check_inbox(name)) for name in names)
    closed = governance.close_poll(poll, lead)
    click.echo(f"demo: {len(names)} agents, {received} messages delivered, poll tally {closed['tally']}")
    click.echo("")
    ctx = click.get_current_context()
    ctx.invoke(status, as_json=False)
    click.echo("")
    click.echo("next, try:")
    click.echo("  federation report            # the files and the database, compared table by table")
    click.echo("  federation rollout status    # the live flag, the processes and the counted comparisons")
    click.echo("  federation doctor            # every health check, each failure with its fix")


# ---------------------------------------------------------------------------
# migration, report, repair, archive: thin commands over federation.transfer.migrate,
# .report, .sync and .archive


def _progress(as_json: bool = False) -> bool:
    """A progress bar only for a person watching a terminal."""
    return sys.stderr.isatty() and not as_json


def _guard(fn: Callable[[], Any]) -> Any:
    """Run *fn*; a database or file error becomes one line and exit 1."""
    try:
        return fn()
    except (FederationError, click.ClickException, SystemExit):
        raise
    except Exception as exc:  # e.g. a driver error the store does not translate
        click.echo(f"error: {type(exc).__name__}: {exc}", err=True)
        sys.exit(1)


def _columns(rows: list[tuple], header: tuple[str, ...]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        click.echo("  ".join(str(v).ljust(w) if i == 0 else str(v).rjust(w) for i, (v, w) in
                             enumerate(zip(r, widths))))


def _listing(title: str, items: list[str], limit: int = 20) -> None:
    if not items:
        return
    click.echo(f"{title} ({len(items)}):")
    for item in items[:limit]:
        click.echo(f"  {item}")
    if len(items) > limit:
        click.echo(f"  ... and {len(items) - limit} more (--json lists all)")


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
    from .operations.accepted import settle
    from .transfer.migrate import migrate

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
    from .operations.accepted import accept, settle
    from .transfer.migrate import migrate

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
    from . import rollout as control
    from .rollout._default import needs_backfill

    try:
        if control.read_flag(s.root) is not None or not needs_backfill(s):
            return
    except (FederationError, OSError):
        return  # an unreadable flag is the operator's to repair; the migration does not touch it
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
    from .rollout._log_summary import summarise_log
    from .transfer.report import build_report

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
            from .domain.authority import repair_command, restore_command
            from .rollout._default import fleet_phase

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
        from .domain.authority import AUTHORITY, repair_command, restore_advice
        from .rollout._default import fleet_phase

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
    from .domain.entities import ENTITY_NAMES

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
    from .rollout._default import fleet_phase
    from .transfer.sync import sync

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
    from .rollout._default import fleet_phase
    from .transfer.archive import archive_legacy

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


# ---------------------------------------------------------------------------
# operations: retention, backup, health (federation.operations.prune, .backup, .doctor)


class _Duration(click.ParamType):
    """``30d``, ``12h``...: checked before anything is opened, so bad input changes nothing (exit 2)."""

    name = "DURATION"

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        from .domain.moments import parse_duration
        from .errors import ValidationError

        try:
            return parse_duration(value)
        except ValidationError as exc:
            self.fail(str(exc), param, ctx)


@main.command("prune")
@click.option("--older-than", "older_than", type=_Duration(), default="30d", show_default=True,
              help="Age of what is removed: a whole number and a unit s, m, h, d or w (30d, 12h).")
@click.option("--dry-run", is_flag=True, help="Count what would be removed; remove nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--batch-size", type=click.IntRange(1), default=2000, show_default=True,
              help="Most keys examined per write transaction; each batch is sized to hold the writer about "
                   "5 ms, then pauses twice as long (agents' writes run between batches).")
@common
def prune_command(older_than: Any, dry_run: bool, as_json: bool, batch_size: int) -> None:
    """Remove read messages and message-history entries older than DURATION from the database.

    Also keeps control/ within its retention (35 days, whatever DURATION is): the
    rollout's counts merged as they age and removed past it, with the mismatch
    files of processes gone as long.  Never an unread message, never a poll or session.  Runs in short batches
    while agents keep working; the files need no change in any phase (read
    messages and the history have no file), so `federation report` still
    agrees afterwards.  Exit 0 done, 1 failure, 2 usage.
    """
    from .operations.prune import prune

    s = _settings()
    result = _guard(lambda: prune(older_than, dry_run=dry_run, batch_size=batch_size, settings=s))
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
        return
    verb = "would remove" if dry_run else "removed"
    c = result.control
    click.echo(f"{verb} (older than {result.cutoff}): " + ", ".join(
        f"{n} {table}" for table, n in result.removed.items()) + f" in {result.seconds:.2f} s")
    click.echo(f"control/ (kept {_counts_keep_days()} days): {verb} {c.get('removed_expired', 0)} counts files and "
               f"{c.get('removed_mismatches', 0)} mismatch files past it; "
               f"{'would merge' if dry_run else 'merged'} {c.get('merged', 0) + c.get('hours_merged', 0)} counts "
               f"files as they aged and {'would remove' if dry_run else 'removed'} {c.get('removed_merged', 0)} "
               "merged before")


def _counts_keep_days() -> int:
    from .rollout import _counts

    return int(_counts.KEEP_SECONDS // 86400)


@main.command("backup")
@click.option("--to", "dest", required=True, metavar="PATH",
              help="The backup file to write (must not exist; its folder must).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@common
def backup_command(dest: str, as_json: bool) -> None:
    """Copy the live SQLite database to PATH, verified with PRAGMA integrity_check.

    Agents keep writing meanwhile; the copy holds everything committed before
    it began.  Exit 0 only when the copy is verified and in place; 1 on
    failure (on PostgreSQL: prints the pg_dump command to use); 2 when PATH
    exists or its folder does not.
    """
    from .operations.backup import backup
    from .errors import ValidationError

    try:
        s = _settings()
        result = _guard(lambda: backup(dest, settings=s))
    except ValidationError as exc:
        raise click.BadParameter(str(exc), param_hint="--to") from None
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
    else:
        click.echo(f"backup of {result.source} written to {result.path} ({result.bytes} bytes, schema version "
                   f"{result.schema_version}, integrity_check ok, {result.seconds:.2f} s)")


@main.command("restore")
@click.option("--from", "source", required=True, metavar="PATH", help="The backup `federation backup` wrote.")
@click.option("--force", is_flag=True, help="Restore while processes of the fleet are alive (needs --reason).")
@click.option("--reason", metavar="TEXT", help="Why (with --force; logged).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@common
def restore_command(source: str, force: bool, reason: str | None, as_json: bool) -> None:
    """Put a verified SQLite backup in place of the database, safely.

    First the flag goes to the phase whose authoritative side is the newest
    (phase 3 -> 2: the files hold what was written after the backup), then
    it names the repair.  Refused while processes of the fleet are alive.
    Exit 0 restored, 1 refused or failed, 2 usage.
    """
    from .operations.restore import restore

    if reason is not None and not force:
        raise click.UsageError("--reason goes with --force")
    s = _settings()
    result = _guard(lambda: restore(source, force=force, reason=reason, settings=s))
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
        return
    click.echo(f"restored {result.source} over {result.database} (taken at {result.taken_at or 'an unknown time'})")
    click.echo(f"phase {result.phase_before} -> {result.phase_after}: {result.note}")
    click.echo("next: " + "; then ".join(f"`{c}`" for c in result.next))


@main.command("doctor")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@common
def doctor_command(as_json: bool) -> None:
    """Check the federation's health; read-only.

    Database integrity (quick_check; PostgreSQL: connection and schema),
    schema version, backfill, WAL size, free space where the database and the
    root live, SQLite on a network filesystem, unreadable legacy files, files
    and database differing.  Exit 0 healthy, 1 when a check failed (each
    failure with the command that fixes it), 2 usage.
    """
    from .operations.doctor import doctor

    s = _settings()
    report = _guard(lambda: doctor(s))
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
    else:
        width = max(len(c.name) for c in report.checks)
        for c in report.checks:
            click.echo(f"{'ok  ' if c.ok else 'FAIL'}  {c.name.ljust(width)}  {c.detail}")
            if not c.ok and c.fix:
                click.echo(f"      {''.ljust(width)}  fix: {c.fix}")
        click.echo("healthy" if report.healthy else "NOT healthy: see the fixes above")
    sys.exit(0 if report.healthy else 1)


@main.command()
@click.option("--agent", "agent", metavar="NAME",
              help="The agent this server acts as: every write is made as NAME (stdio).")
@click.option("--http", "http", is_flag=True,
              help="Serve every agent with a token (`federation agents add`) over Streamable HTTP at /mcp.")
@click.option("--host", default=None, metavar="ADDRESS",
              help="With --http: the address to bind [default: 127.0.0.1]; anything but loopback is exposed "
                   "to the network (put TLS in front of it).")
@click.option("--port", default=None, type=click.IntRange(0, 65535),
              help="With --http: the port to bind [default: 8765; 0: a free one].")
@click.option("--workers", default=None, type=click.IntRange(1, 256), metavar="N",
              help="With --http: N server processes behind the one port, for more than one core [default: 1].")
@common
def serve(agent: str | None, http: bool, host: str | None, port: int | None, workers: int | None) -> None:
    """Serve the federation's tools over MCP: to one agent over stdio, or to many over HTTP.

    Stdio: register it in an MCP client as `federation serve --agent NAME`.  Stdout
    carries only the protocol; logs go to stderr or FEDERATION_LOG_FILE.

    HTTP: `federation serve --http` serves http://127.0.0.1:8765/mcp; each request
    acts as the agent its `Authorization: Bearer TOKEN` names (docs/agents-http.md).
    `--workers N` runs N processes behind that one port (one per core).
    """
    from .domain.validate import agent as valid_agent
    from .errors import ValidationError

    if http == (agent is not None):
        raise click.UsageError("give either --agent NAME (stdio) or --http (many agents, one token each)")
    if not http and (host is not None or port is not None or workers is not None):
        raise click.UsageError("--host, --port and --workers go with --http")
    if http:
        _serve_http(host or "127.0.0.1", 8765 if port is None else port, workers or 1)
        return
    try:
        valid_agent(agent, "--agent")
    except ValidationError as exc:
        raise click.BadParameter(str(exc), param_hint="--agent") from None
    from .apps.signals import Terminated, exit_now, exit_on_stop_signals
    from .apps.mcp_server import serve as run_server

    exit_on_stop_signals()  # SIGTERM, Ctrl-C: counts flushed and announcement withdrawn at exit
    try:
        run_server(agent)
    except Terminated as stop:
        # the MCP SDK's stdin reader (a worker thread, not a daemon) stays blocked until the client closes
        # the pipe, and the interpreter would wait for it before running the atexit handlers
        exit_now(stop.code)


def _serve_http(host: str, port: int, workers: int = 1) -> None:
    from .apps.signals import Terminated, exit_now, exit_on_stop_signals
    from .apps.mcp_http import is_loopback, serve as run_http

    def listening(url: str) -> None:
        processes = f" ({workers} worker processes)" if workers > 1 else ""
        click.echo(f"federation MCP over HTTP on {url}; Ctrl-C stops it{processes}", err=True)
        if not is_loopback(host):
            click.echo(f"warning: {host} is not loopback: bearer tokens cross the network in clear text; "
                       "put TLS in front of this server (a reverse proxy), see docs/agents-http.md", err=True)

    # uvicorn stops gracefully on SIGTERM, then raises it again under this handler: a clean exit
    exit_on_stop_signals()
    try:
        run_http(host=host, port=port, on_listening=listening, workers=workers)
    except Terminated as stop:
        # a worker thread may still run a tool call (a waiting pulse): don't wait for it to exit
        exit_now(stop.code)


# ---------------------------------------------------------------------------
# bearer tokens of the agents served over HTTP (federation.apps.agent_tokens)


@main.group()
def agents() -> None:
    """Bearer tokens of the agents that `federation serve --http` serves (one per agent)."""


_ROOT_GIVEN = "federation.root_given"


def _token_root(make: bool = False) -> Any:
    """The root holding control/agents.json; *make*: the configured root (FEDERATION_ROOT or the default) is
    created when missing (`agents add` on a fresh machine, as `demo` does).  A missing root given with
    `--root` (most likely mistyped), or any missing root when listing or revoking, is a usage error."""
    root = _settings().root
    given = click.get_current_context().meta.get(_ROOT_GIVEN, False)
    if make and not given and not root.exists():
        root.mkdir(parents=True, exist_ok=True)  # the root itself, given by the operator
    if not root.is_dir():
        raise click.UsageError(f"the federation root {root} does not exist (--root or FEDERATION_ROOT)")
    return root


@agents.command("add")
@click.argument("name", metavar="NAME")
@click.option("--json", "as_json", is_flag=True, help='Print {"agent", "token"}.')
@common
def agents_add(name: str, as_json: bool) -> None:
    """Make a new bearer token for agent NAME and print it once (only its hash is kept).

    A second `add` for the same agent replaces its token: the old one stops working.
    """
    from .apps import agent_tokens
    from .domain.validate import agent as valid_agent
    from .errors import ValidationError

    try:
        valid_agent(name, "NAME")
    except ValidationError as exc:
        raise click.BadParameter(str(exc), param_hint="NAME") from None
    token, replaced = agent_tokens.add(name, _token_root(make=True))
    if as_json:
        click.echo(json.dumps({"agent": name, "token": token}))
    else:
        click.echo(token)
        click.echo(f"token for agent {name!r} (shown once, only its hash is kept"
                   + (f"; it replaces {name}'s previous token" if replaced else "") + ")", err=True)


@agents.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@common
def agents_list(as_json: bool) -> None:
    """List the agents with a token: active or revoked, since when (never the token)."""
    from .apps import agent_tokens

    entries = agent_tokens.list_tokens(_token_root())
    if as_json:
        click.echo(json.dumps({"agents": [e.to_json() for e in entries]}, indent=2))
        return
    if not entries:
        click.echo("no agent has a token (`federation agents add NAME`)")
        return
    _columns([(e.agent, "active" if e.active else "revoked", e.created_at, e.created_by, e.revoked_at or "-")
              for e in entries], ("agent", "state", "created_at", "created_by", "revoked_at"))


@agents.command("revoke")
@click.argument("name", metavar="NAME")
@common
def agents_revoke(name: str) -> None:
    """Revoke agent NAME's token: servers refuse it within seconds, without a restart."""
    from .apps import agent_tokens
    from .domain.validate import agent as valid_agent
    from .errors import ValidationError

    try:
        valid_agent(name, "NAME")
    except ValidationError as exc:
        raise click.BadParameter(str(exc), param_hint="NAME") from None
    if agent_tokens.revoke(name, _token_root()):
        click.echo(f"revoked the token of agent {name!r}; servers refuse it within {agent_tokens.CHECK_EVERY_S:g} s")
    else:
        click.echo(f"the token of agent {name!r} was already revoked")


# ---------------------------------------------------------------------------
# the live flag and the fleet (federation.rollout)


def _record_sync(s: config.Settings, to: str, changes: int, forced: bool = False, reason: str | None = None) -> None:
    """Note a completed sync in control/ (the guard of a step back from phase 4 asks for one)."""
    from .rollout import record_sync

    try:
        record_sync(s.root, to, changes, forced=forced, reason=reason)
    except OSError as exc:
        click.echo(f"warning: the sync is done but could not be recorded for `rollout set` ({exc})", err=True)


def _moment(text: str | None) -> datetime | None:
    """An ISO 8601 time, or a duration back from now (90m, 12h, 7d, 2w): the grammar of ``domain.moments``."""
    from .domain.moments import parse_moment
    from .errors import ValidationError

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
    from . import rollout as control

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
        from .rollout import current_phase

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
        _columns([(p["host"], p["pid"], p["agent"] or "-", p["phase"],
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
    from . import rollout as control

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
    from .domain.authority import repair_command
    from .rollout._default import fleet_phase

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
    from . import rollout as control

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


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind; the dashboard has no authentication, so keep it on loopback unless "
                   "something in front of it controls access.")
@click.option("--port", default=8321, show_default=True, type=click.IntRange(0, 65535), help="Port to bind.")
@click.option("--refresh", "refresh_s", default=5.0, show_default=True, type=click.FloatRange(0.5, 3600),
              help="Seconds between the page's updates.")
@common
def dashboard(host: str, port: int, refresh_s: float) -> None:
    """Serve a read-only rollout dashboard: / (page), /api/status, /metrics (Prometheus).

    It shows the live flag, the fleet, counted consistency per entity, recent
    mismatches, row counts and the guards of the next step; it never changes
    the flag (that is `federation rollout set`).
    """
    from .apps.signals import exit_on_stop_signals
    from .apps.dashboard import serve as serve_dashboard

    # uvicorn stops gracefully on SIGTERM, then raises the signal again with the previous handler: this one
    # makes that an exit that runs the atexit handlers (the default action would skip them)
    exit_on_stop_signals()
    serve_dashboard(host=host, port=port, refresh_s=refresh_s, on_listening=lambda url: click.echo(
        f"federation dashboard on {url} (metrics: {url}metrics); Ctrl-C stops it", err=True))


if __name__ == "__main__":  # python -m federation.cli
    main()
