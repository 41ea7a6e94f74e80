"""``federation serve --http``: one MCP server for many agents, over stateless Streamable HTTP at ``/mcp``.

Each HTTP request carries ``Authorization: Bearer TOKEN``; the token names the
agent (:mod:`federation.apps.agent_tokens`) and the request acts as that agent, with
exactly the tools of ``federation serve --agent NAME`` over stdio (each agent's
own :class:`~federation.apps.mcp_server.FederationServer`, built on first use).
Identity is never an argument: no header, argument or body can pick another
agent than the token's.

In front of the MCP application sits :class:`Gate`, a plain ASGI middleware:

- a request with an ``Origin`` that is not the server's own (or, on loopback,
  a loopback origin) is refused with 403, as the MCP specification asks
  against DNS rebinding; on loopback a foreign ``Host`` is refused too (421);
- no token, an unknown or a revoked one: 401, with nothing said about which;
- the token itself is never logged, returned, or put in an error message.

The server is stateless (no ``Mcp-Session-Id``): every request stands alone,
so a restart or a second server behind a load balancer loses nothing.
``pulse`` with ``wait`` may hold a request open; at most
:data:`MAX_WAITING_PER_AGENT` such requests per agent wait at once.
"""

from __future__ import annotations

import ipaddress
import json
import time
import urllib.parse
from typing import Any, Callable

from .._logging import library_logger
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.transport_security import TransportSecuritySettings

from .. import __version__, config
from .agent_tokens import TokenRegistry, tokens_path
from .mcp_server import TOOL_NAMES, AgentTools, FederationServer, agent_tools_list, build_server

__all__ = ["is_loopback", "MCP_PATH", "MAX_WAITING_PER_AGENT", "Gate", "HttpFederationServer", "create_app", "serve"]

log = library_logger("federation.mcp_http")

MCP_PATH = "/mcp"
DEFAULT_PORT = 8765
#: How many ``pulse(wait=...)`` calls of one agent may wait at once; one more is a tool error.
MAX_WAITING_PER_AGENT = 4
#: How many ``pulse(wait=...)`` calls may wait at once in the whole server: each holds a worker thread.
MAX_WAITING_TOTAL = 64
#: Worker threads for tool calls: every waiting pulse may hold one, and the other calls keep this many more.
THREADS_BESIDE_WAITING = 40
#: What a request's scope carries once the gate authenticated it.
AGENT_KEY = "federation.agent"
#: Longest uvicorn waits for requests in flight (a waiting pulse) when asked to stop.
GRACEFUL_STOP_S = 3

_LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _host_of(authority: str) -> str:
    """The host of ``host[:port]`` (an IPv6 address in brackets keeps none of them)."""
    if authority.startswith("["):
        return authority[1:].split("]", 1)[0]
    return authority.rsplit(":", 1)[0] if authority.count(":") == 1 else authority


class Gate:
    """ASGI middleware: Origin and Host checks, then the bearer token names the agent (or 401)."""

    def __init__(self, app: Any, registry: TokenRegistry, *, loopback: bool):
        self.app = app
        self.registry = registry
        self.loopback = loopback

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":  # the lifespan: the session manager's start and stop
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        host = headers.get("host", "")
        if self.loopback and not is_loopback(_host_of(host)):
            await self._refuse(send, 421, "misdirected_request", "this server answers loopback host names only")
            return
        origin = headers.get("origin")
        if origin is not None and not self._origin_ok(origin, host):
            log.warning("http_origin_refused", origin=origin[:200], client=_client(scope))
            await self._refuse(send, 403, "forbidden", "requests from this Origin are not accepted")
            return
        agent = self._agent(headers.get("authorization"))
        if agent is None:
            log.info("http_unauthorized", client=_client(scope), path=scope.get("path"),
                     reason="no bearer token" if not headers.get("authorization") else "unknown or revoked token")
            await self._refuse(send, 401, "invalid_token", "a valid bearer token is required "
                               "(`federation agents add NAME` makes one)",
                               [(b"www-authenticate", b'Bearer realm="federation", error="invalid_token"')])
            return
        await self.app({**scope, AGENT_KEY: agent}, receive, send)

    def _agent(self, authorization: str | None) -> str | None:
        if not authorization:
            return None
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer":
            return None
        return self.registry.agent_for(token.strip())

    def _origin_ok(self, origin: str, host: str) -> bool:
        """The server's own origin; on loopback, any loopback origin (an agent's local tools)."""
        try:
            parts = urllib.parse.urlsplit(origin)
        except ValueError:
            return False
        if parts.scheme not in ("http", "https") or not parts.netloc:
            return False
        if parts.netloc.lower() == host.lower():
            return True
        return self.loopback and parts.hostname is not None and is_loopback(parts.hostname)

    @staticmethod
    async def _refuse(send: Callable, status: int, error: str, message: str,
                      extra: list[tuple[bytes, bytes]] | None = None) -> None:
        body = json.dumps({"error": error, "error_description": message}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                *(extra or [])]})
        await send({"type": "http.response.body", "body": body})


def _client(scope: dict) -> str | None:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else None


def _instructions() -> str:
    return (
        "You are one agent of a federation of cooperating agents; the bearer token you connect with names "
        "which one. These tools read and change the federation's shared state: inbox messages, context, "
        "expertise, profiles, polls and sessions. Every write acts as your agent (sender, voter, poll creator, "
        "reviewer, session lead): there is no argument to act as anyone else. Call pulse once per tick: it "
        "records your heartbeat, receives your inbox and lists the polls awaiting your vote."
    )


class HttpFederationServer(MCPServer):
    """The tools of every agent at one endpoint: each call runs the tools of the agent its request names."""

    def __init__(self, **kwargs: Any):
        # tools/list is the same for every agent: a template agent's tools answer it, never a call
        self._template = agent_tools_list(AgentTools("agent"))
        super().__init__(tools=self._template, **kwargs)
        self._servers: dict[str, FederationServer] = {}
        self._waiting: dict[str, int] = {}
        self._threads_sized = False

    def _server_for(self, agent: str) -> FederationServer:
        server = self._servers.get(agent)
        if server is None:
            server = self._servers[agent] = build_server(agent, like=self._template)
            log.info("http_agent_first_call", agent=agent)
        return server

    async def call_tool(self, name: str, arguments: dict[str, Any], context: Any = None) -> Any:
        agent = _request_agent(context)
        if agent is None:  # the gate lets no such request through; never act as anyone by default
            raise ToolError("not authenticated: this server acts only as the agent a bearer token names")
        server = self._server_for(agent)
        if name != "pulse" or not _waits(arguments):
            return await server.call_tool(name, arguments, context)
        if self._waiting.get(agent, 0) >= MAX_WAITING_PER_AGENT:
            log.info("tool_refused", tool=name, agent=agent, error="too_many_waiting")
            raise ToolError(f"refused: {MAX_WAITING_PER_AGENT} pulse calls with wait are already waiting for "
                            f"agent {agent!r}; call pulse again when one of them returns")
        if sum(self._waiting.values()) >= MAX_WAITING_TOTAL:
            log.warning("tool_refused", tool=name, agent=agent, error="server_waiting_full")
            raise ToolError(f"busy, try again shortly: {MAX_WAITING_TOTAL} pulse calls are "
                            "already waiting on this server; call pulse without wait, or with wait a little later")
        self._size_threads()
        # the event loop's thread only touches the counts: no lock needed
        self._waiting[agent] = self._waiting.get(agent, 0) + 1
        try:
            return await server.call_tool(name, arguments, context)
        finally:
            self._waiting[agent] -= 1

    def _size_threads(self) -> None:
        """Enough worker threads that waiting pulses never starve the other calls (anyio's default is 40)."""
        if not self._threads_sized:
            import anyio.to_thread

            limiter = anyio.to_thread.current_default_thread_limiter()
            limiter.total_tokens = max(limiter.total_tokens, MAX_WAITING_TOTAL + THREADS_BESIDE_WAITING)
            self._threads_sized = True


def _waits(arguments: dict[str, Any]) -> bool:
    """Whether this pulse may wait (counted as the tool will read it: "5" is 5 seconds to pydantic)."""
    try:
        return float(arguments.get("wait") or 0) > 0
    except (TypeError, ValueError):
        return False  # the tool refuses it


def _request_agent(context: Any) -> str | None:
    request = getattr(getattr(context, "request_context", None), "request", None)
    scope = getattr(request, "scope", None)
    return scope.get(AGENT_KEY) if isinstance(scope, dict) else None


def create_app(registry: TokenRegistry, *, loopback: bool = True) -> Any:
    """The ASGI application: :class:`Gate` in front of the stateless MCP endpoint at :data:`MCP_PATH`."""
    server = HttpFederationServer(name="federation", title="federation (HTTP)", instructions=_instructions(),
                                  version=__version__)
    # the Gate checks Host and Origin (for every request, before the token); the SDK's own check stays off
    app = server.streamable_http_app(streamable_http_path=MCP_PATH, stateless_http=True, json_response=True,
                                     transport_security=TransportSecuritySettings(
                                         enable_dns_rebinding_protection=False))
    return Gate(app, registry, loopback=loopback)


def serve(host: str = "127.0.0.1", port: int = DEFAULT_PORT,
          on_listening: Callable[[str], None] | None = None) -> None:
    """Serve every agent with a token at ``http://host:port/mcp`` until stopped (SIGTERM, Ctrl-C).

    *on_listening* is called with the endpoint's URL once the socket is bound (port 0: a free one).
    A port in use or an unknown host raises :class:`OSError` before anything is served.
    """
    import uvicorn

    from .. import rollout
    from .dashboard.app import listen as _listen

    s = config.settings()
    loopback = is_loopback(host)
    registry = TokenRegistry(tokens_path(s.root))
    app = create_app(registry, loopback=loopback)
    sock = _listen(host, port)
    port = sock.getsockname()[1]
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}{MCP_PATH}"
    if not loopback:
        log.warning("mcp_http_exposed", host=host, port=port,
                    detail="tokens travel in clear text over plain HTTP: put TLS in front (a reverse proxy) "
                           "before agents on other hosts use it")
    rollout.announce_agent(f"http@{host}:{port}")  # in the fleet from the start, like `serve --agent`
    in_effect = rollout.phase_in_effect()
    with_tokens = len(registry.agents())
    log.info("mcp_http_started", url=url, phase=in_effect["phase"], phase_source=in_effect["source"],
             engine=s.engine, database=s.db_display, tools=len(TOOL_NAMES), tokens_file=str(registry.path),
             agents_with_tokens=with_tokens)
    if not with_tokens and registry.problem is None:  # (an unreadable file was logged as such)
        log.warning("mcp_http_no_tokens", tokens_file=str(registry.path),
                    detail="no agent has a token yet, so every request is refused: `federation agents add NAME`")
    if on_listening is not None:
        on_listening(url)
    server = uvicorn.Server(uvicorn.Config(app, access_log=False, log_level="warning", log_config=None,
                                           timeout_graceful_shutdown=GRACEFUL_STOP_S))
    started = time.monotonic()
    stopped_by = None
    try:
        with sock:
            server.run(sockets=[sock])
    except SystemExit as exc:  # SIGTERM/SIGINT through the CLI's handler (federation.apps.signals)
        stopped_by = getattr(exc, "signal", None) or "exit"
        raise
    finally:
        log.info("mcp_http_stopped", url=url, seconds=round(time.monotonic() - started, 1),
                 **({"signal": stopped_by} if stopped_by else {}))
