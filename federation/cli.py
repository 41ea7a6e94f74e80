"""The ``federation`` command line.

Every command takes ``--root`` and ``--db``, which win over the
environment.  Library errors become one clean line on stderr and exit 1
(usage errors exit 2), never a traceback.
"""

from __future__ import annotations

import functools
import json
import sys
from typing import Any, Callable

import click

from . import config
from .errors import ConfigError, FederationError


def _apply_overrides(root: str | None, db: str | None) -> None:
    values = {}
    if root:
        values["FEDERATION_ROOT"] = root
    if db:
        if db.startswith(("postgresql://", "postgres://")):
            values["FEDERATION_DB_URL"] = db
        else:
            values["FEDERATION_DB"] = db
    if values:
        config._overrides.update(values)
    config.reset()


def common(fn: Callable) -> Callable:
    """Add --root/--db, apply them, set up logging, turn errors into clean exits."""

    @click.option("--db", "db", metavar="PATH", help="SQLite file, or a postgresql:// URL (wins over the environment).")
    @click.option("--root", "root", metavar="DIR", help="Root of the legacy file tree (wins over FEDERATION_ROOT).")
    @functools.wraps(fn)
    def wrapper(root: str | None, db: str | None, **kwargs: Any) -> Any:
        from ._logging import configure

        configure()
        _apply_overrides(root, db)
        try:
            config.settings()
        except ConfigError as exc:
            raise click.UsageError(str(exc)) from None
        try:
            return fn(**kwargs)
        except ConfigError as exc:
            raise click.UsageError(str(exc)) from None
        except (FederationError, OSError) as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="federation")
def main() -> None:
    """Shared state for a federation of cooperating AI agents."""


def status_data() -> dict:
    """What ``federation status`` shows, as a dict."""
    from ._files import Tree

    s = config.settings()
    data: dict[str, Any] = {
        "root": str(s.root),
        "database": s.db_display,
        "engine": s.engine,
        "use_db": s.use_db,
        "phase": s.effective_phase,
        "shadow_sample": s.shadow_sample,
        "legacy_files": Tree(s.root).has_legacy_data(),
    }
    if s.db_url:  # a server database exists; has our schema been created in it?
        from .database import get_db

        exists = get_db(s).schema_version() > 0
    else:
        exists = s.db_path.exists()
    if exists:
        from .sqlstore import get_store

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
    data = status_data()
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    phase_names = {1: "1 (files only)", 2: "2 (files first, database shadow)",
                   3: "3 (database first, files shadow)", 4: "4 (database only)"}
    click.echo(f"root:      {data['root']}")
    click.echo(f"database:  {data['database']} ({data['engine']})")
    click.echo(f"phase:     {phase_names[data['phase']]}")
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


@main.command()
@click.option("--agent", "agent", required=True, metavar="NAME",
              help="The agent this server acts as: every write is made as NAME.")
@common
def serve(agent: str) -> None:
    """Serve the federation's tools to one agent over MCP (stdio).

    Register it in an MCP client as: federation serve --agent NAME.  Stdout
    carries only the protocol; logs go to stderr or FEDERATION_LOG_FILE.
    """
    from ._validate import agent as valid_agent
    from .errors import ValidationError

    try:
        valid_agent(agent, "--agent")
    except ValidationError as exc:
        raise click.BadParameter(str(exc), param_hint="--agent") from None
    from .mcp_server import serve as run_server

    run_server(agent)


def run() -> None:  # pragma: no cover - console entry point
    main()


if __name__ == "__main__":  # python -m federation.cli
    main()
