"""``prune``, ``backup``, ``restore``, ``doctor``: thin commands over :mod:`federation.operations`."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from ._base import _guard, _settings, common, main


# ---------------------------------------------------------------------------
# operations: retention, backup, health (federation.operations.prune, .backup, .doctor)


class _Duration(click.ParamType):
    """``30d``, ``12h``...: checked before anything is opened, so bad input changes nothing (exit 2)."""

    name = "DURATION"

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        from ..domain.moments import parse_duration
        from ..errors import ValidationError

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
    files of processes gone as long; done tasks (rows and files) finished before the cutoff.  Never an unread
    message, never a poll or session, never a task not done.  Runs in short batches
    while agents keep working; the files need no change in any phase (read
    messages and the history have no file), so `federation report` still
    agrees afterwards.  Exit 0 done, 1 failure, 2 usage.
    """
    from ..operations.prune import prune

    s = _settings()
    result = _guard(lambda: prune(older_than, dry_run=dry_run, batch_size=batch_size, settings=s))
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
        return
    verb = "would remove" if dry_run else "removed"
    c = result.control
    click.echo(f"{verb} (older than {result.cutoff}): " + ", ".join(
        f"{n} {table}" for table, n in result.removed.items()) + f" in {result.seconds:.2f} s")
    if result.files:
        click.echo(f"legacy files: {verb} " + ", ".join(f"{n} {table}" for table, n in result.files.items()))
    click.echo(f"control/ (kept {_counts_keep_days()} days): {verb} {c.get('removed_expired', 0)} counts files and "
               f"{c.get('removed_mismatches', 0)} mismatch files past it; "
               f"{'would merge' if dry_run else 'merged'} {c.get('merged', 0) + c.get('hours_merged', 0)} counts "
               f"files as they aged and {'would remove' if dry_run else 'removed'} {c.get('removed_merged', 0)} "
               "merged before")


def _counts_keep_days() -> int:
    from ..rollout import KEEP_SECONDS

    return int(KEEP_SECONDS // 86400)


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
    from ..operations.backup import backup
    from ..errors import ValidationError

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
    from ..operations.restore import restore

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
    from ..operations.doctor import doctor

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
