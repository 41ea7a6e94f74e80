"""``federation serve --http``: one MCP server for many agents, over stateless Streamable HTTP at ``/mcp``.

Each HTTP request carries ``Authorization: Bearer TOKEN``; the token names the
agent (:mod:`federation.apps.agent_tokens`) and the request acts as that agent, with
exactly the tools of ``federation serve --agent NAME`` over stdio.  One
:class:`HttpFederationServer` serves every agent: its tools read the agent from the
request the gate authenticated, so nothing is built or kept per agent.
Identity is never an argument: no header, argument or body can pick another
agent than the token's.

In front of the MCP application sits :class:`Gate`, a plain ASGI middleware:

- a request with an ``Origin`` that is not the server's own (or, on loopback,
  a loopback origin) is refused with 403, as the MCP specification asks
  against DNS rebinding; on loopback a foreign ``Host`` is refused too (421);
- no token, an unknown or a revoked one: 401, with nothing said about which;
- the token itself is never logged, returned, or put in an error message.

The server is stateless (no ``Mcp-Session-Id``): every request stands alone,
so a restart, a second server behind a load balancer or ``--workers N`` (N
processes on one port, :func:`serve`) loses nothing.

Behind the gate, :class:`Endpoint` answers a POST of one JSON-RPC request with
the SDK's own single-request kernel (:func:`mcp.server.runner.serve_one`: the
same handlers, validation and results as the SDK's stateless transport), in the
request's task: no per-request transport, memory streams, task group or
dispatcher.  Everything else (notifications, batches, GET, DELETE, another
protocol era, malformed requests) goes to the SDK's stateless session manager
unchanged.
``pulse`` with ``wait`` may hold a request open; at most
:data:`MAX_WAITING_PER_AGENT` such requests per agent wait at once.
"""

from __future__ import annotations

import contextvars
import functools
import gc
import ipaddress
import json
import socket
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Callable

import anyio
import anyio.to_thread
from mcp.server.connection import Connection
from mcp.server.context import ServerRequestContext
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.mcpserver.tools import Tool
from mcp.server.runner import serve_one
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import DEFAULT_MAX_REQUEST_BODY_SIZE, TransportSecuritySettings
from mcp.shared.exceptions import NoBackChannelError
from mcp.shared.jsonrpc_dispatcher import handler_exception_to_error_data
from mcp.shared.message import ServerMessageMetadata
from mcp.shared.transport_context import TransportContext
from mcp_types import DEFAULT_NEGOTIATED_VERSION, ErrorData, JSONRPCError
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS
from starlette.requests import Request

from .. import Federation, __version__, rollout
from .._logging import library_logger
from ..stores.sqlite import FIRST_WRITE_MUST_NOT_WAIT, GateBusy
from .agent_tokens import TokenRegistry, tokens_path
from .http_wire import accepts_json, headers_of, is_json, json_body, one_request, read_body, replay, reply
from .http_workers import GRACEFUL_STOP_S, listen_too, reserve, supervise
from .mcp_server import TOOL_NAMES, FederationServer, tools_acting_as

__all__ = ["is_loopback", "MCP_PATH", "MAX_WAITING_PER_AGENT", "Gate", "Endpoint", "HttpFederationServer", "create_app",
           "serve"]

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
#: The request's headers as the gate read them (lower-case names), for the endpoint behind it.
HEADERS_KEY = "federation.headers"

_LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
_TRANSPORT = TransportContext(kind="streamable-http", can_send_request=False)


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

    def __init__(self, app: Any, registry: TokenRegistry, *, loopback: bool, worker: int | None = None):
        self.app = app
        self.registry = registry
        self.loopback = loopback
        self._where = {} if worker is None else {"worker": worker}  # in its log lines: which process said it
        self._hosts: dict[str, bool] = {}

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":  # the lifespan: the session manager's start and stop
            await self.app(scope, receive, send)
            return
        headers = headers_of(scope)
        host = headers.get("host", "")
        if self.loopback and not self._loopback_host(host):
            await self._refuse(send, 421, "misdirected_request", "this server answers loopback host names only")
            return
        origin = headers.get("origin")
        if origin is not None and not self._origin_ok(origin, host):
            log.warning("http_origin_refused", origin=origin[:200], client=_client(scope), **self._where)
            await self._refuse(send, 403, "forbidden", "requests from this Origin are not accepted")
            return
        agent = self._agent(headers.get("authorization"))
        if agent is None:
            log.info("http_unauthorized", client=_client(scope), path=scope.get("path"),
                     reason="no bearer token" if not headers.get("authorization") else "unknown or revoked token",
                     **self._where)
            await self._refuse(send, 401, "invalid_token", "a valid bearer token is required "
                               "(`federation agents add NAME` makes one)",
                               [(b"www-authenticate", b'Bearer realm="federation", error="invalid_token"')])
            return
        await self.app({**scope, AGENT_KEY: agent, HEADERS_KEY: headers}, receive, send)

    def _loopback_host(self, authority: str) -> bool:
        """Whether the ``Host`` names a loopback host (remembered: agents send the same few every time)."""
        known = self._hosts.get(authority)
        if known is None:
            if len(self._hosts) >= 256:
                self._hosts.clear()
            known = self._hosts[authority] = is_loopback(_host_of(authority))
        return known

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


#: The agent the running tool call acts as (set by :meth:`HttpFederationServer.call_tool`; the worker
#: thread that runs the tool sees the value of the request's task).
_CALLER: contextvars.ContextVar[str | None] = contextvars.ContextVar("federation_http_caller", default=None)


def _caller() -> str:
    agent = _CALLER.get()
    if agent is None:  # no call gets here without one: never act as anyone by default
        raise ToolError("not authenticated: this server acts only as the agent a bearer token names")
    return agent


#: Whether the running tool call may run on the event loop's thread (see :meth:`HttpFederationServer.call_tool`).
_INLINE: contextvars.ContextVar[bool] = contextvars.ContextVar("federation_http_inline", default=False)


def _where_it_runs(tool: Tool) -> Tool:
    """*tool* with a function that runs on the event loop's thread when the call may (:data:`_INLINE`),
    else on a worker thread, as the SDK runs a plain function."""
    fn = tool.fn

    async def run(**kwargs: Any) -> Any:
        if _INLINE.get():
            must_not_wait = FIRST_WRITE_MUST_NOT_WAIT.set(True)
            try:
                return fn(**kwargs)
            except GateBusy:
                pass  # another writer holds the database: nothing of the call was written; wait on a thread
            finally:
                FIRST_WRITE_MUST_NOT_WAIT.reset(must_not_wait)
        return await anyio.to_thread.run_sync(functools.partial(fn, **kwargs))

    return tool.model_copy(update={"fn": run, "is_async": True})


class HttpFederationServer(FederationServer):
    """The tools of every agent at one endpoint: each call runs as the agent its request names.

    One server object and one set of tools for all agents: a tool reads its agent from the request
    (:data:`AGENT_KEY`, set by the :class:`Gate`), so an agent's first call builds nothing and nothing
    is kept per agent but the count of its waiting pulses while they wait.

    Where a call runs: on the event loop's own thread when the process is in phase 4 on SQLite (every
    read and write is a local SQLite statement) and the call is not a waiting ``pulse`` -- unless its
    first write finds the database's write gate held by another writer (a `prune` batch, another
    worker): then, nothing of it written, it runs again on a worker thread, where it may wait
    (:data:`~federation.stores.sqlite.FIRST_WRITE_MUST_NOT_WAIT`).  On a worker thread otherwise: in
    phases 1-3 (legacy file locks another process may hold for any time), on PostgreSQL (network
    round trips) and for a waiting pulse.  Handing a call to a thread and back, with the GIL passed
    to and fro, costs more CPU than the call itself (bench/bench_http.py).
    """

    def __init__(self, *, inline_engine: bool = False, **kwargs: Any):
        super().__init__(None, [_where_it_runs(t) for t in tools_acting_as(_caller)], **kwargs)
        self._inline_engine = inline_engine
        self._waiting: dict[str, int] = {}
        self._threads_sized = False

    def _may_run_inline(self) -> bool:
        return self._inline_engine and rollout.mode(self.federation.settings)[0] == 4

    def acting_as(self, context: Any) -> str:
        agent = _request_agent(context)
        if agent is None:  # the gate lets no such request through; never act as anyone by default
            raise ToolError("not authenticated: this server acts only as the agent a bearer token names")
        return agent

    async def _call_tool(self, name: str, arguments: dict[str, Any], context: Any = None,
                         prepared: Any = None) -> Any:
        # (within self.serving(): the call, on this thread or a worker's, serves this server's federation)
        agent = self.acting_as(context)
        reset = _CALLER.set(agent)
        try:
            if name != "pulse" or not _waits(arguments):
                inline = _INLINE.set(self._may_run_inline())
                try:
                    return await super()._call_tool(name, arguments, context, prepared)
                finally:
                    _INLINE.reset(inline)
            return await self._waiting_pulse(agent, name, arguments, context, prepared)
        finally:
            _CALLER.reset(reset)

    async def _waiting_pulse(self, agent: str, name: str, arguments: dict[str, Any], context: Any,
                             prepared: Any) -> Any:
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
            return await super()._call_tool(name, arguments, context, prepared)
        finally:
            self._waiting[agent] -= 1
            if not self._waiting[agent]:
                del self._waiting[agent]  # nothing kept for an agent that is not waiting

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
    """The agent the gate put in the request's scope; *context* is the SDK's request context (what the
    ``tools/call`` handler receives) or its tool :class:`Context` around it."""
    if not isinstance(context, ServerRequestContext):
        context = getattr(context, "request_context", None)
    request = getattr(context, "request", None)
    scope = getattr(request, "scope", None)
    return scope.get(AGENT_KEY) if isinstance(scope, dict) else None


@dataclass
class _OneExchange:
    """The dispatch context of one POSTed request answered with one JSON reply (what the SDK's stateless
    JSON-response transport gives a handler): no back-channel, and notifications have no wire."""

    request_id: Any
    message_metadata: Any
    transport: TransportContext = _TRANSPORT
    can_send_request: bool = False
    cancel_requested: anyio.Event = field(default_factory=anyio.Event)

    async def send_raw_request(self, method: str, params: Any, opts: Any = None) -> dict[str, Any]:
        raise NoBackChannelError(method)

    async def notify(self, method: str, params: Any, opts: Any = None) -> None:
        return None

    async def progress(self, progress: float, total: float | None = None, message: str | None = None) -> None:
        return None


class Endpoint:
    """ASGI application of the MCP endpoint (behind the :class:`Gate`).

    A POST of one JSON-RPC request (the SDK client's every call) is answered here with the SDK's
    single-request kernel, :func:`mcp.server.runner.serve_one`, exactly as the SDK's stateless
    JSON-response transport answers it (same handlers, validation, result and error shapes), but in
    the request's own task.  Anything else goes to the SDK's :class:`StreamableHTTPSessionManager`.
    """

    def __init__(self, server: HttpFederationServer):
        self.server = server
        self.lowlevel = server._lowlevel_server
        self.manager = StreamableHTTPSessionManager(
            app=self.lowlevel, json_response=True, stateless=True,
            # the Gate checks Host and Origin (for every request, before the token); the SDK's own check stays off
            security_settings=TransportSecuritySettings(enable_dns_rebinding_protection=False))
        self.max_body = DEFAULT_MAX_REQUEST_BODY_SIZE
        self.lifespan_state: Any = None

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        if scope["path"] != MCP_PATH:
            await reply(send, 404, b"Not Found", b"text/plain; charset=utf-8")
            return
        if scope["method"] != "POST":
            await self.manager.handle_request(scope, receive, send)
            return
        headers = scope.get(HEADERS_KEY) or headers_of(scope)
        version = headers.get("mcp-protocol-version")
        length = headers.get("content-length", "")
        if ((version is not None and version not in HANDSHAKE_PROTOCOL_VERSIONS)
                or not length.isdigit() or int(length) > self.max_body
                or not is_json(headers.get("content-type", "")) or not accepts_json(headers.get("accept", ""))):
            await self.manager.handle_request(scope, receive, send)
            return
        body, rest = await read_body(receive, int(length))
        request = one_request(body) if rest is None else None
        if request is None:  # the SDK answers it (a notification, a batch, an error), from the body read here
            await self.manager.handle_request(scope, replay(body, rest, receive), send)
            return
        await self._answer(scope, receive, send, request, version)

    async def _answer(self, scope: dict, receive: Callable, send: Callable, req: dict[str, Any],
                      version: str | None) -> None:
        exchange = _OneExchange(req["id"], ServerMessageMetadata(request_context=Request(scope, receive)))
        connection = Connection.from_envelope(version or DEFAULT_NEGOTIATED_VERSION, None, None)
        try:
            result = await serve_one(self.lowlevel, exchange, req["method"], req.get("params"),
                                     connection=connection, lifespan_state=self.lifespan_state)
        except Exception as exc:  # the SDK dispatcher's mapping, word for word
            error = handler_exception_to_error_data(exc)
            if error is None:
                log.exception("mcp_handler_crashed", method=req["method"][:100], error=type(exc).__name__)
                error = ErrorData(code=0, message=str(exc))
            body = JSONRPCError(jsonrpc="2.0", id=req["id"], error=error).model_dump_json(
                by_alias=True, exclude_unset=True).encode()
        else:
            body = json_body({"jsonrpc": "2.0", "id": req["id"], "result": result})
        await reply(send, 200, body, b"application/json")

    async def _lifespan(self, receive: Callable, send: Callable) -> None:
        """The server's lifespan and the SDK session manager's, entered once for the process."""
        await receive()  # lifespan.startup
        started = False
        try:
            async with self.lowlevel.lifespan(self.lowlevel) as state, self.manager.run():
                self.lifespan_state = state
                await send({"type": "lifespan.startup.complete"})
                started = True
                await receive()  # lifespan.shutdown
        except BaseException as exc:
            if not started:
                await send({"type": "lifespan.startup.failed", "message": f"{type(exc).__name__}: {exc}"})
            else:
                await send({"type": "lifespan.shutdown.failed", "message": f"{type(exc).__name__}: {exc}"})
            raise
        await send({"type": "lifespan.shutdown.complete"})


def create_app(registry: TokenRegistry, federation: Federation, *, loopback: bool = True,
               worker: int | None = None) -> Any:
    """The ASGI application serving *federation*: :class:`Gate` in front of the MCP :class:`Endpoint` at
    :data:`MCP_PATH` (*worker*: this process's number among ``--workers N``, in the gate's log lines)."""
    server = HttpFederationServer(name="federation", title="federation (HTTP)", instructions=_instructions(),
                                  version=__version__, inline_engine=federation.settings.engine == "sqlite",
                                  federation=federation)
    return Gate(Endpoint(server), registry, loopback=loopback, worker=worker)


def serve(host: str = "127.0.0.1", port: int = DEFAULT_PORT,
          on_listening: Callable[[str], None] | None = None, workers: int = 1, *, federation: Federation) -> None:
    """Serve every agent with a token at ``http://host:port/mcp``, in *federation* (handed down by the CLI),
    until stopped (SIGTERM, Ctrl-C).

    *on_listening* is called with the endpoint's URL once the socket is bound (port 0: a free one).
    A port in use or an unknown host raises :class:`OSError` before anything is served.

    *workers* > 1: this process reserves the port, then forks that many worker processes, each listening
    on it with ``SO_REUSEPORT`` (the kernel spreads the connections over them; where the option does not
    exist they accept on one socket bound here), and watches them (:func:`_supervise`): each
    worker is a server of its own -- its own token registry (a revocation reaches every worker within
    :data:`~federation.apps.agent_tokens.CHECK_EVERY_S`), its own fleet entry and counts, following the
    live flag on its own -- and the supervisor serves nothing, joins no fleet and writes no count.
    """
    from .dashboard.app import listen as _listen

    if workers < 1:
        raise ValueError("workers must be at least 1")
    s = federation.settings
    loopback = is_loopback(host)
    registry = TokenRegistry(tokens_path(s.root))
    reuse_port = workers > 1 and hasattr(socket, "SO_REUSEPORT")
    sock = reserve(host, port) if reuse_port else _listen(host, port)
    port = sock.getsockname()[1]
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}{MCP_PATH}"
    if not loopback:
        log.warning("mcp_http_exposed", host=host, port=port,
                    detail="tokens travel in clear text over plain HTTP: put TLS in front (a reverse proxy) "
                           "before agents on other hosts use it")
    if workers == 1:
        with federation.serve():
            _serve_here(federation, sock, host, port, url, registry, loopback, on_listening)
        return
    with_tokens = len(registry.agents())
    log.info("mcp_http_started", url=url, workers=workers, engine=s.engine, database=s.db_display,
             tools=len(TOOL_NAMES), tokens_file=str(registry.path), agents_with_tokens=with_tokens)
    _warn_no_tokens(registry, with_tokens)
    supervise(sock, workers, lambda: _worker(federation, sock, host, port, url, loopback, reuse_port), url,
              on_listening)


def _warn_no_tokens(registry: TokenRegistry, with_tokens: int) -> None:
    if not with_tokens and registry.problem is None:  # (an unreadable file was logged as such)
        log.warning("mcp_http_no_tokens", tokens_file=str(registry.path),
                    detail="no agent has a token yet, so every request is refused: `federation agents add NAME`")


def _serve_here(federation: Federation, sock: Any, host: str, port: int, url: str, registry: TokenRegistry,
                loopback: bool, on_listening: Callable[[str], None] | None, worker: int | None = None) -> None:
    """Serve on *sock* in this process until stopped: the whole server (1 worker) or one of N workers
    (within ``federation.serve()``: its announcement and phase; each call serves it too, see create_app)."""
    import uvicorn

    s = federation.settings
    app = create_app(registry, federation, loopback=loopback, worker=worker)
    rollout.announce_agent(f"http@{host}:{port}", s)  # in the fleet from the start, like `serve --agent`
    in_effect = rollout.phase_in_effect(s)
    with_tokens = len(registry.agents())
    event = "mcp_http_started" if worker is None else "mcp_http_worker_started"
    log.info(event, url=url, phase=in_effect["phase"], phase_source=in_effect["source"],
             engine=s.engine, database=s.db_display, tools=len(TOOL_NAMES), tokens_file=str(registry.path),
             agents_with_tokens=with_tokens, **({} if worker is None else {"worker": worker}))
    if worker is None:
        _warn_no_tokens(registry, with_tokens)
    if on_listening is not None:
        on_listening(url)
    config = uvicorn.Config(app, access_log=False, log_level="warning", log_config=None,
                            timeout_graceful_shutdown=GRACEFUL_STOP_S)
    config.load()  # uvicorn's protocol modules imported now, not at the first connection: settled below
    server = uvicorn.Server(config)
    _settle_heap()
    started = time.monotonic()
    stopped_by = None
    try:
        with sock:
            server.run(sockets=[sock])
    except SystemExit as exc:  # SIGTERM/SIGINT through the CLI's handler (federation.apps.signals)
        stopped_by = getattr(exc, "signal", None) or "exit"
        raise
    finally:
        log.info("mcp_http_stopped" if worker is None else "mcp_http_worker_stopped", url=url,
                 seconds=round(time.monotonic() - started, 1), **({} if worker is None else {"worker": worker}),
                 **({"signal": stopped_by} if stopped_by else {}))


def _settle_heap() -> None:
    """Move what the process holds once it is set up (modules, the SDK's and pydantic's schemas: ~100,000
    objects) out of the cyclic garbage collector's sight: a full collection then scans only what calls
    made since, not all of it again (a full collection of the set-up heap took ~60-90 ms, ~30-45 us a call
    averaged over the calls between two)."""
    gc.collect()
    gc.freeze()


def _worker(federation: Federation, sock: Any, host: str, port: int, url: str, loopback: bool,
            reuse_port: bool) -> Callable[[int], None]:
    def run(number: int) -> None:
        registry = TokenRegistry(tokens_path(federation.settings.root))
        listening = listen_too(sock) if reuse_port else sock
        if reuse_port:
            sock.close()  # the supervisor's copy holds the port
        with federation.serve():
            _serve_here(federation, listening, host, port, url, registry, loopback, None, worker=number)

    return run
