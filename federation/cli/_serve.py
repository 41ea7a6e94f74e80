"""``serve`` (the MCP server, stdio or HTTP), ``agents`` (the HTTP agents' tokens) and ``dashboard``."""

from __future__ import annotations

import json
from typing import Any

import click

from ._base import _ROOT_GIVEN, _columns, _federation, _settings, common, main


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
    from ..domain.validate import agent as valid_agent
    from ..errors import ValidationError

    if http == (agent is not None):
        raise click.UsageError("give either --agent NAME (stdio) or --http (many agents, one token each)")
    if not http and (host is not None or port is not None or workers is not None):
        raise click.UsageError("--host, --port and --workers go with --http")
    from ..apps.allocator import bound_malloc_arenas, trim_periodically

    bound_malloc_arenas()  # before the server's threads: its memory bounded by configuration (issue 30)
    trim_periodically()  # the free pages between blocks in use handed back once a minute (issue 30)
    if http:
        _serve_http(host or "127.0.0.1", 8765 if port is None else port, workers or 1)
        return
    try:
        valid_agent(agent, "--agent")
    except ValidationError as exc:
        raise click.BadParameter(str(exc), param_hint="--agent") from None
    from ..apps.signals import Terminated, exit_now, exit_on_stop_signals
    from ..apps.mcp_server import serve as run_server

    exit_on_stop_signals()  # SIGTERM, Ctrl-C: counts flushed and announcement withdrawn at exit
    try:
        run_server(agent, _federation())
    except Terminated as stop:
        # the MCP SDK's stdin reader (a worker thread, not a daemon) stays blocked until the client closes
        # the pipe, and the interpreter would wait for it before running the atexit handlers
        exit_now(stop.code)


def _serve_http(host: str, port: int, workers: int = 1) -> None:
    from ..apps.signals import Terminated, exit_now, exit_on_stop_signals
    from ..apps.mcp_http import is_loopback, serve as run_http

    def listening(url: str) -> None:
        processes = f" ({workers} worker processes)" if workers > 1 else ""
        click.echo(f"federation MCP over HTTP on {url}; Ctrl-C stops it{processes}", err=True)
        if not is_loopback(host):
            click.echo(f"warning: {host} is not loopback: bearer tokens cross the network in clear text; "
                       "put TLS in front of this server (a reverse proxy), see docs/agents-http.md", err=True)

    # uvicorn stops gracefully on SIGTERM, then raises it again under this handler: a clean exit
    exit_on_stop_signals()
    try:
        run_http(host=host, port=port, on_listening=listening, workers=workers, federation=_federation())
    except Terminated as stop:
        # a worker thread may still run a tool call (a waiting pulse): don't wait for it to exit
        exit_now(stop.code)


# ---------------------------------------------------------------------------
# bearer tokens of the agents served over HTTP (federation.apps.agent_tokens)


@main.group()
def agents() -> None:
    """Bearer tokens of the agents that `federation serve --http` serves (one per agent)."""





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
    from ..apps import agent_tokens
    from ..domain.validate import agent as valid_agent
    from ..errors import ValidationError

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
    from ..apps import agent_tokens

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
    from ..apps import agent_tokens
    from ..domain.validate import agent as valid_agent
    from ..errors import ValidationError

    try:
        valid_agent(name, "NAME")
    except ValidationError as exc:
        raise click.BadParameter(str(exc), param_hint="NAME") from None
    if agent_tokens.revoke(name, _token_root()):
        click.echo(f"revoked the token of agent {name!r}; servers refuse it within {agent_tokens.CHECK_EVERY_S:g} s")
    else:
        click.echo(f"the token of agent {name!r} was already revoked")




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
    from ..apps.signals import exit_on_stop_signals
    from ..apps.dashboard import serve as serve_dashboard

    # uvicorn stops gracefully on SIGTERM, then raises the signal again with the previous handler: this one
    # makes that an exit that runs the atexit handlers (the default action would skip them)
    exit_on_stop_signals()
    serve_dashboard(host=host, port=port, refresh_s=refresh_s, settings=_settings(), on_listening=lambda url: click.echo(
        f"federation dashboard on {url} (metrics: {url}metrics); Ctrl-C stops it", err=True))


if __name__ == "__main__":  # python -m federation.cli
    main()
