"""``federation status`` and ``federation demo``."""

from __future__ import annotations

import json
from typing import Any

import click

from .. import config
from ._base import _settings, common, main


def status_data(settings: config.Settings) -> dict:
    """What ``federation status`` shows, as a dict (of *settings*' federation)."""
    from ..rollout import current_phase
    from ..stores.files import Tree, has_legacy_data

    s = settings
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
    from ..stores.database import database_exists

    if database_exists(s, ask_server=True):
        from ..stores.sqlstore import get_store

        store = get_store(s)
        data["tables"] = store.counts()
        data["backfilled_at"] = store.meta("backfilled_at")
    else:
        data["tables"] = None
    return data


#: what status and report count, said where they show it (a reader saw 2 messages in one, 0 in the other)
MESSAGES_COUNTED = ("(rows: every row in the database; messages counts read ones too, kept until "
                    "`federation prune`; `federation report` compares only the messages not yet read)")
MESSAGES_COMPARED = ("(messages: only those not yet read are compared, wherever their file is: inbox/, "
                     "leased/, dead/; a read message's file is gone and its row is kept until `federation prune`, "
                     "so `federation status` may count more)")


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
    click.echo(MESSAGES_COUNTED)


@main.command()
@click.option("--agents", default=3, show_default=True, type=click.IntRange(2, 50), help="How many agents.")
@common
def demo(agents: int) -> None:
    """Run a few agents' operations through the shim, then show the status."""
    from .. import context, governance, messaging

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
