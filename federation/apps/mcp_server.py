"""The MCP server agents talk to: one tool per CONTRACT operation, acting as one agent.

``federation serve --agent NAME`` runs :func:`build_server` over stdio.  The
agent's identity belongs to the server, never to a tool argument: the tools
send, vote, claim the inbox, close polls, review and set context *as NAME*,
and no argument can change that (unknown arguments are refused, not ignored).
Reading another agent's public state (context, expertise, profile, polls,
sessions) is allowed.

Every :class:`~federation.errors.FederationError` becomes an MCP tool error
(``is_error``) with a message the model can act on; any other exception
becomes a tool error too, with its traceback logged to stderr.  Nothing but
protocol is written to stdout.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import importlib.util
import inspect
import io
import json
import logging
import os
import re
import sys
from dataclasses import dataclass
from typing import Any, Callable

import anyio.to_thread
import pydantic_core
from mcp.server._otel import OpenTelemetryMiddleware
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ToolError, UnexpectedResourceError, UnexpectedToolError
from mcp.server.mcpserver.tools import Tool
from mcp.shared.exceptions import MCPError
from mcp_types import CallToolResult, TextContent
from pydantic import TypeAdapter
from pydantic import ValidationError as PydanticValidationError

from .. import Federation, __version__
from ..domain import validate as v
from .._logging import library_logger
from ..stores.sqlite import GateBusy
from ..errors import (BackfillRequiredError, ConflictError, FederationError, FileStorageError, NotFoundError,
                      PermissionDeniedError, StorageError, ValidationError)
from .mcp_tools import CONTENT_LIMIT, GROUPS, MCP_PAGE, ContextTools, GovernanceTools, MessagingTools, TaskTools

__all__ = ["build_server", "AgentTools", "FederationServer", "MCP_PAGE", "TOOL_NAMES", "tools_acting_as"]

log = library_logger("federation.mcp")

_CONTENT_LIMIT = CONTENT_LIMIT
_IDENTITY_WORDS = ("agent", "sender", "voter", "creator", "reviewer", "lead", "from", "as", "me", "self")


class AgentTools(MessagingTools, ContextTools, GovernanceTools, TaskTools):
    """The tools of one agent's server, every group of :mod:`federation.apps.mcp_tools`; ``self.agent`` is
    who every write acts as."""

    def __init__(self, agent: str):
        self.agent = v.agent(agent, "agent")


#: The tools, in CONTRACT order.
TOOL_NAMES: tuple[str, ...] = tuple(name for group in GROUPS for name, fn in vars(group).items()
                                    if hasattr(fn, "_mcp_hints"))

_ERROR_KINDS: tuple[tuple[type[FederationError], str], ...] = (
    (ValidationError, "invalid argument"),
    (NotFoundError, "not found"),
    (PermissionDeniedError, "forbidden"),
    (ConflictError, "refused"),
    (BackfillRequiredError, "database not ready"),
    (FileStorageError, "storage failed"),  # disk full, read-only...: the operator must act, retrying won't help
    (StorageError, "storage unavailable, try again shortly"),
    (FederationError, "failed"),
)


def _run_guarded(name: str, method: Callable, agent: str, kwargs: dict[str, Any]) -> Any:
    """Run *method*; federation errors become tool errors, anything else is logged then a tool error."""
    try:
        return method(**kwargs)
    except FederationError as exc:
        kind = next(label for cls, label in _ERROR_KINDS if isinstance(exc, cls))
        # The caller's mistakes are routine; a storage failure is the operator's to see.
        emit = log.warning if isinstance(exc, StorageError) else log.info
        emit("tool_refused", tool=name, agent=agent, error=type(exc).__name__, message=str(exc))
        raise ToolError(f"{kind}: {exc}") from exc
    except GateBusy:
        raise  # nothing written: the caller runs the call again where it may wait (the HTTP server)
    except Exception as exc:
        log.exception("tool_crashed", tool=name, agent=agent, error=type(exc).__name__)
        raise ToolError(f"internal error ({type(exc).__name__}); the server logged the details "
                        "and keeps serving") from exc


def _guarded(name: str, method: Callable, agent: str) -> Callable:
    """*method* run through :func:`_run_guarded` (one agent's tool)."""

    @functools.wraps(method)
    def call(**kwargs: Any) -> Any:
        return _run_guarded(name, method, agent, kwargs)

    return call


def _acting_as_caller(name: str, current_agent: Callable[[], str]) -> Callable:
    """The tool *name* of whichever agent ``current_agent()`` names when it is called (one tool, every agent)."""

    def call(**kwargs: Any) -> Any:
        agent = current_agent()
        return _run_guarded(name, getattr(AgentTools(agent), name), agent, kwargs)

    call.__name__ = name
    return call


#: The longest JSON-RPC line the stdio server reads (characters).  The largest valid request (256
#: domains of 4 KiB, every character JSON-escaped) is well under it; a 100 MB message is refused
#: without ever being held whole (it was read into memory before the size check said no).
MAX_REQUEST_CHARS = 8 * 1024 * 1024
#: the tool name an over-long request is replaced by, so that its caller gets a tool error with its id
TOO_LARGE = "__request_too_large__"
_ID = re.compile(r'"id"\s*:\s*("(?:[^"\\]|\\.){0,200}"|-?\d{1,30})')


def _own_stdin() -> io.TextIOWrapper:
    """stdin as UTF-8 text on a descriptor of our own (closing it never closes fd 0)."""
    return io.TextIOWrapper(os.fdopen(os.dup(0), "rb"), encoding="utf-8", errors="replace")


class _BoundedLines:
    """Text lines of at most *limit* characters: a longer line is read through in 1 MiB pieces and
    dropped, and a ``tools/call`` of :data:`TOO_LARGE` carrying its id takes its place."""

    def __init__(self, raw: io.TextIOBase, limit: int):
        self.raw, self.limit = raw, limit

    def readline(self) -> str:
        line = self.raw.readline(self.limit + 1)
        if len(line) <= self.limit or line.endswith("\n"):
            return line
        head, size = line[:4096], len(line)
        while True:
            piece = self.raw.readline(1 << 20)
            size += len(piece)
            if not piece or piece.endswith("\n"):
                break
        log.warning("request_too_large", characters=size, limit=self.limit)
        found = _ID.search(head)
        if found is None:  # no id to answer: the SDK reports an unparsable line
            return "{}\n"
        return json.dumps({"jsonrpc": "2.0", "id": json.loads(found.group(1)), "method": "tools/call",
                           "params": {"name": TOO_LARGE, "arguments": {"size": size}}}) + "\n"

    def close(self) -> None:
        self.raw.close()


#: The SDK's own logger of tool failures (:meth:`FederationServer._handle_call_tool` logs as the SDK's handler does).
_SDK_LOG = logging.getLogger("mcp.server.mcpserver.server")


def _tracing_installed() -> bool:
    """Whether an OpenTelemetry SDK is installed: without one the API's spans are no-ops, and the SDK's
    tracing middleware costs every request its work for nothing."""
    try:
        return importlib.util.find_spec("opentelemetry.sdk") is not None
    except (ImportError, ValueError):
        return False


@dataclass(frozen=True)
class _Prepared:
    """What a call of one tool needs, looked up once when the server is built: its function, its argument
    model with what the SDK's ``FuncMetadata.validate_arguments`` works out from it at every call (the
    arguments it JSON-decodes first, the keyword of each field), and the validator of its result (its
    output schema's model)."""

    tool: Tool
    output: TypeAdapter
    #: argument names (and aliases) whose field is not a plain ``str``: a JSON text given there is decoded
    decoded: frozenset[str]
    #: (field name, keyword the function takes it as)
    keywords: tuple[tuple[str, str], ...]

    def arguments(self, arguments: dict[str, Any]) -> dict[str, Any]:
        """``FuncMetadata.validate_arguments(arguments)`` (its ``pre_parse_json``, the argument model, its
        ``model_dump_one_level``), raising what it raises."""
        data = arguments
        for key, value in arguments.items():
            if key in self.decoded and isinstance(value, str):
                try:
                    parsed = json.loads(value)
                except (ValueError, RecursionError):
                    continue
                if isinstance(parsed, (str, int, float)):
                    continue
                if data is arguments:
                    data = dict(arguments)
                data[key] = parsed
        model = self.tool.fn_metadata.arg_model.model_validate(data)
        return {keyword: getattr(model, name) for name, keyword in self.keywords}


def _prepare(tool: Tool) -> _Prepared | None:
    """*tool* prepared for :meth:`FederationServer._run_prepared`, or None when it takes what that does not
    give (a context, resolved parameters) or returns what it does not convert (no output schema, a wrapped
    result): such a tool is called the SDK's way."""
    meta = tool.fn_metadata
    if tool.context_kwarg or tool.resolved_params or meta.output_model is None or meta.output_schema is None \
            or meta.wrap_output:
        return None
    fields = meta.arg_model.model_fields
    decoded = {key for name, info in fields.items() if info.annotation is not str
               for key in (name, info.alias) if key}
    return _Prepared(tool, TypeAdapter(meta.output_model), frozenset(decoded),
                     tuple((name, info.alias or name) for name, info in fields.items()))


class FederationServer(MCPServer):
    """An :class:`MCPServer` that refuses arguments a tool does not declare.

    Pydantic would silently drop an unknown argument such as ``sender`` or
    ``voter``; an agent that tries to act as someone else must be told no.

    A ``tools/call`` is answered by :meth:`_handle_call_tool`: the SDK's own steps for these tools
    (argument model, function, result conversion and validation against the output schema), with what
    it would rebuild at every call built once (:class:`_Prepared`) and no per-call :class:`Context`
    (no tool takes one).  The OpenTelemetry middleware is left out when no OpenTelemetry SDK is
    installed (its spans would be no-ops): the SDK documents dropping it as the way to opt out.
    """

    def __init__(self, agent: str | None, tools: list[Tool], *, federation: Federation | None = None, **kwargs: Any):
        self.agent = agent  # None: the agent of each call is the request's (the HTTP server, a subclass)
        #: the federation every call serves (None: the default federation, as the public functions do)
        self.federation = federation
        self._params = {t.name: (set(t.parameters.get("properties", {})), set(t.parameters.get("required", [])))
                        for t in tools}
        self._prepared = {t.name: p for t in tools if (p := _prepare(t)) is not None}
        super().__init__(tools=tools, **kwargs)
        if not _tracing_installed():
            middleware = self._lowlevel_server.middleware
            middleware[:] = [m for m in middleware if not isinstance(m, OpenTelemetryMiddleware)]

    async def run_stdio_async(self) -> None:
        """The SDK's stdio transport, reading requests through :class:`_BoundedLines`: a request over
        :data:`MAX_REQUEST_CHARS` is refused before it is held in memory whole."""
        import anyio
        from mcp.server.stdio import stdio_server

        stdin = anyio.wrap_file(_BoundedLines(_own_stdin(), MAX_REQUEST_CHARS))
        async with stdio_server(stdin=stdin) as (read_stream, write_stream):
            await self._lowlevel_server.run(read_stream, write_stream,
                                            self._lowlevel_server.create_initialization_options())

    def acting_as(self, context: Any) -> str:
        """The agent a call acts as: this server's (stdio); a subclass serving many agents reads the request."""
        assert self.agent is not None
        return self.agent

    def serving(self) -> contextlib.AbstractContextManager:
        """The block within which a call serves this server's federation (handed down to the worker thread
        that runs a tool with the call's context)."""
        return self.federation.serve() if self.federation is not None else contextlib.nullcontext()

    async def call_tool(self, name: str, arguments: dict[str, Any], context: Any = None) -> Any:
        with self.serving():
            return await self._call_tool(name, arguments, context)

    async def _handle_call_tool(self, ctx: Any, params: Any) -> Any:
        """The ``tools/call`` handler (the SDK's, registered at its construction): a prepared tool is run by
        :meth:`_run_prepared` and its failure answered as the SDK's handler answers it; anything else (an
        unknown name, the over-long request's stand-in) goes the SDK's way."""
        prepared = self._prepared.get(params.name)
        if prepared is None:
            return await super()._handle_call_tool(ctx, params)
        try:
            with self.serving():
                return await self._call_tool(params.name, params.arguments or {}, ctx, prepared)
        except MCPError:
            raise
        except Exception as exc:  # the SDK's handler's mapping: an is_error result, logged as it logs it
            if isinstance(exc, ToolError) and not isinstance(exc, UnexpectedToolError):
                if isinstance(exc.__cause__, PydanticValidationError):  # field names only: the values are the caller's
                    fields = sorted({".".join(map(str, e["loc"])) for e in exc.__cause__.errors()})
                    _SDK_LOG.info("Tool %r rejected arguments: %r", params.name, fields)
                else:
                    _SDK_LOG.info("Tool %r failed: %r", params.name, str(exc))
            else:
                _SDK_LOG.exception("Tool %r raised an unexpected exception", params.name)
            return CallToolResult(content=[TextContent(type="text", text=str(exc))], is_error=True)

    @staticmethod
    async def _run_prepared(prepared: _Prepared, arguments: dict[str, Any]) -> dict[str, Any]:
        """What the SDK's ``Tool.run(convert_result=True)`` does for these tools, raising what it raises:
        the arguments through the tool's argument model, the function (a plain one on a worker thread),
        and its result validated against the tool's output model, as the wire result (the JSON text
        content and the structured content the SDK gives)."""
        tool = prepared.tool
        try:
            validated = prepared.arguments(arguments)
        except PydanticValidationError as exc:
            raise ToolError(f"Error executing tool {tool.name}: {exc}") from exc
        except MCPError:
            raise
        except Exception as exc:
            raise UnexpectedToolError(f"Error executing tool {tool.name}") from exc
        try:
            if tool.is_async:
                result = await tool.fn(**validated)
            else:
                result = await anyio.to_thread.run_sync(functools.partial(tool.fn, **validated))
            if not isinstance(result, dict):
                return tool.fn_metadata.convert_result(result)
            structured = prepared.output.dump_python(
                prepared.output.validate_python(result, by_alias=True, by_name=True), mode="json", by_alias=True)
            text = pydantic_core.to_json(result, fallback=str, indent=2).decode()
        except MCPError:
            raise
        except (UnexpectedToolError, UnexpectedResourceError) as exc:
            raise UnexpectedToolError(f"Error executing tool {tool.name}: {exc}") from exc
        except (ToolError, ResourceError) as exc:
            raise ToolError(f"Error executing tool {tool.name}: {exc}") from exc
        except Exception as exc:
            raise UnexpectedToolError(f"Error executing tool {tool.name}") from exc
        # CallToolResult(content=[TextContent(text)], structured_content=...).model_dump(by_alias=True, mode="json",
        # exclude_none=True), without the model: the runner validates and shapes it for the connection's version
        return {"content": [{"type": "text", "text": text}], "structuredContent": structured, "isError": False,
                "resultType": "complete"}

    async def _call_tool(self, name: str, arguments: dict[str, Any], context: Any = None,
                         prepared: _Prepared | None = None) -> Any:
        if name == TOO_LARGE:  # put in the place of an over-long request by _BoundedLines
            raise ToolError(f"request too large: {arguments.get('size')} characters; the limit is "
                            f"{MAX_REQUEST_CHARS} (message content is at most {_CONTENT_LIMIT})")
        if name in self._params:
            allowed, required = self._params[name]
            unknown = sorted(set(arguments) - allowed)
            if unknown:
                agent = self.acting_as(context)
                hint = ""
                if any(u.lower() in _IDENTITY_WORDS for u in unknown):
                    hint = f" This server always acts as agent {agent!r}; identity is not an argument."
                accepted = ", ".join(sorted(allowed)) or "no arguments"
                log.info("tool_refused", tool=name, agent=agent, error="unknown_arguments", arguments=unknown)
                raise ToolError(f"invalid argument: unknown argument(s) {', '.join(unknown)}; "
                                f"{name} accepts {accepted}.{hint}")
            missing = sorted(required - set(arguments))
            if missing:
                raise ToolError(f"invalid argument: missing required argument(s) {', '.join(missing)}")
        try:
            if prepared is not None:
                return await self._run_prepared(prepared, arguments)
            return await super().call_tool(name, arguments, context)
        except UnexpectedToolError:
            raise
        except ToolError as exc:
            # The text starts with the kind (docs/mcp-and-agents.md, "Errors"): the SDK's
            # "Error executing tool NAME: " prefix is taken off.
            if not isinstance(exc.__cause__, PydanticValidationError):
                raise ToolError(str(exc).removeprefix(f"Error executing tool {name}: ")) from exc.__cause__
            # One line per argument, without pydantic's class names and documentation links.
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'arguments'}: {e['msg']}"
                                 for e in exc.__cause__.errors())
            raise ToolError(f"invalid argument: {problems}") from exc.__cause__


def _instructions(agent: str) -> str:
    return (
        f"You are agent {agent!r} of a federation of cooperating agents. These tools read and change the "
        "federation's shared state: inbox messages, context, expertise, profiles, polls and sessions. Every "
        f"write acts as {agent!r} (sender, voter, poll creator, reviewer, session lead): there is no argument "
        "to act as anyone else. A session's phase and roles are its lead's; its artifacts and reviews need a "
        "role in it. Call check_inbox to receive your messages (each is delivered once), or "
        "receive then ack so that a message you could not finish comes back, "
        "heartbeat now and then to show you are alive, and set_context to say what you are working on. "
        "pulse does the heartbeat, the inbox and the list of polls awaiting your vote in one call per tick."
    )


def build_server(agent: str, like: list[Tool] | None = None, *, federation: Federation | None = None) -> FederationServer:
    """The MCP server of *agent*, with one tool per CONTRACT operation (*like*: see :func:`agent_tools_list`),
    serving *federation* (None: the default federation).

    Raises :class:`ValidationError` for an invalid agent name.
    """
    agent_tools = AgentTools(agent)
    return FederationServer(agent_tools.agent, agent_tools_list(agent_tools, like), federation=federation,
                            name="federation",
                            title=f"federation ({agent})", instructions=_instructions(agent_tools.agent),
                            version=__version__)


def agent_tools_list(agent_tools: AgentTools, like: list[Tool] | None = None) -> list[Tool]:
    """One MCP tool per CONTRACT operation, each acting as ``agent_tools.agent``.

    *like*: the tools of another agent, copied with this agent's functions -- the schemas and argument
    models are the same for every agent, and building them is what costs.
    """
    if like is not None:
        return [tool.model_copy(update={"fn": _guarded(tool.name, getattr(agent_tools, tool.name),
                                                       agent_tools.agent)}) for tool in like]
    tools = []
    for name in TOOL_NAMES:
        method = getattr(agent_tools, name)
        tool = Tool.from_function(_guarded(name, method, agent_tools.agent), name=name,
                                  description=inspect.cleandoc(method.__doc__ or ""),
                                  annotations=method._mcp_hints, structured_output=True)
        tool.parameters["additionalProperties"] = False
        tools.append(tool)
    return tools


def tools_acting_as(current_agent: Callable[[], str]) -> list[Tool]:
    """One MCP tool per CONTRACT operation, each acting as the agent ``current_agent()`` names at the call
    (the HTTP server: one set of tools for every agent, nothing kept per agent).  The schemas, argument
    models and descriptions are those of :func:`agent_tools_list`; the functions are plain (not async):
    the caller decides where they run."""
    return [tool.model_copy(update={"fn": _acting_as_caller(tool.name, current_agent)})
            for tool in agent_tools_list(AgentTools("agent"))]


def _client_gone(error: BaseException) -> bool:
    """Whether *error* (a task group's, possibly nested) is only a closed stdout: the client went away."""
    inner = getattr(error, "exceptions", None)  # an exception group (Python 3.11, or the 3.10 backport)
    if isinstance(inner, (list, tuple)) and inner:
        return all(_client_gone(e) for e in inner)
    return isinstance(error, BrokenPipeError) or (isinstance(error, OSError) and error.errno == errno.EPIPE)


def _stdout_to_devnull() -> None:
    """Point fd 1 at /dev/null, so that the interpreter's last flush of a dead pipe raises nothing."""
    with contextlib.suppress(OSError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def serve(agent: str, federation: Federation) -> None:
    """Serve *agent*'s tools over stdio, in *federation* (handed down by the CLI), until the client closes stdin."""
    with federation.serve():
        _serve(build_server(agent, federation=federation))


def _serve(server: FederationServer) -> None:
    s = server.federation.settings
    from .. import rollout

    rollout.announce_agent(server.agent, s)  # in the fleet from the start, not from its first call
    in_effect = rollout.phase_in_effect(s)
    log.info("mcp_server_started", agent=server.agent, phase=in_effect["phase"], phase_source=in_effect["source"],
             engine=s.engine, database=s.db_display, tools=len(TOOL_NAMES))
    stopped_by = None
    try:
        server.run("stdio")
    except KeyboardInterrupt:  # Ctrl-C in a terminal: stop quietly, like a closed stdin
        stopped_by = "SIGINT"
    except SystemExit as exc:  # SIGTERM through the CLI's handler (federation.apps.signals): exit after the log line
        stopped_by = getattr(exc, "signal", None) or "exit"
        raise
    except BaseException as exc:  # the SDK's task group wraps a closed stdout in an exception group
        if not _client_gone(exc):
            raise
        stopped_by = "client gone"  # the client died mid-reply: nothing to answer to, no traceback
        _stdout_to_devnull()
    finally:
        log.info("mcp_server_stopped", agent=server.agent, **({"signal": stopped_by} if stopped_by else {}))
