"""The MCP server: real ``federation serve`` processes driven by the SDK's stdio client."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator

import anyio
import pytest
from mcp.client.client import Client
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from structlog.testing import capture_logs

from federation import context, governance, messaging
from federation.errors import ConflictError, NotFoundError, StorageError, ValidationError
from federation.apps.mcp_server import TOOL_NAMES, build_server

REPO = Path(__file__).resolve().parent.parent

CONTRACT_TOOLS = {
    "send_message", "check_inbox", "peek_inbox", "get_history", "sent_messages", "pulse", "broadcast",
    "receive", "ack",
    "set_context", "get_context", "heartbeat", "list_agents",
    "set_expertise", "get_expertise", "find_experts",
    "set_profile", "get_profile",
    "create_poll", "vote", "close_poll", "get_poll", "list_polls",
    "create_session", "assign_role", "attach_artifact", "review_artifact", "set_phase", "get_session",
    "list_sessions",
    "create_task", "claim_task", "complete_task", "release_task", "get_task", "list_tasks",
}


class AgentClient:
    """One agent's connection: ``ok`` expects success, ``error`` expects a tool error."""

    def __init__(self, name: str, session: Any, stderr: Path | None = None):
        self.name = name
        self.session = session
        self.stderr = stderr

    async def ok(self, tool: str, **arguments: Any) -> dict:
        result = await self.session.call_tool(tool, arguments)
        assert not result.is_error, f"{tool}({arguments}) failed: {result.content}"
        return result.structured_content

    async def error(self, tool: str, **arguments: Any) -> str:
        result = await self.session.call_tool(tool, arguments)
        assert result.is_error, f"{tool}({arguments}) should have failed, got {result.structured_content}"
        return result.content[0].text


@asynccontextmanager
async def agent_server(fed, name: str, phase: int = 3) -> AsyncIterator[AgentClient]:
    """A real ``python -m federation serve --agent NAME`` process and an initialised client session."""
    params = StdioServerParameters(command=sys.executable, args=["-m", "federation", "serve", "--agent", name],
                                   env=fed.subprocess_env(phase), cwd=str(REPO))
    stderr = fed.root.parent / f"serve-{name}.stderr"
    with stderr.open("a") as errlog:
        async with stdio_client(params, errlog=errlog) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                yield AgentClient(name, session, stderr)


def test_tool_list_has_every_operation_with_an_input_schema(fed):
    """tools/list names every CONTRACT operation, each with a described object schema that forbids extras."""

    async def scenario():
        async with agent_server(fed, "alice") as alice:
            tools = {t.name: t for t in (await alice.session.list_tools()).tools}
        assert set(tools) == CONTRACT_TOOLS == set(TOOL_NAMES)
        for tool in tools.values():
            schema = tool.input_schema
            assert schema["type"] == "object" and schema["additionalProperties"] is False, tool.name
            assert len(tool.description) > 40, tool.name
            for prop, spec in schema.get("properties", {}).items():
                assert spec.get("description"), f"{tool.name}.{prop} has no description"
        review = tools["review_artifact"].input_schema["properties"]["status"]
        assert review["enum"] == ["approved", "changes_requested"]
        list_status = tools["list_polls"].input_schema["properties"]["status"]["anyOf"]
        assert {"enum": ["open", "closed"], "type": "string"} in list_status
        # Nothing in any schema lets a caller name who it acts as.
        for tool in ("send_message", "check_inbox", "peek_inbox", "get_history", "vote", "close_poll",
                     "create_poll", "review_artifact", "set_context", "set_expertise", "set_profile",
                     "heartbeat", "create_session", "pulse", "broadcast", "sent_messages", "receive", "ack",
                     "create_task", "claim_task", "complete_task", "release_task"):
            props = set(tools[tool].input_schema.get("properties", {}))
            assert not props & {"agent", "sender", "voter", "creator", "reviewer", "lead"}, tool

    anyio.run(scenario)


@pytest.mark.parametrize("phase", [1, 2, 3])
def test_two_agents_on_one_database_exchange_a_message_and_both_votes_count(fed, phase):
    """alice sends to bob: bob's check_inbox gets it exactly once; both vote and the tally counts both.

    Phases 1-3 here (phase 4 in the restart test): the server serves whatever storage the environment selects.
    """

    async def scenario():
        async with agent_server(fed, "alice", phase) as alice, agent_server(fed, "bob", phase) as bob:
            sent = await alice.ok("send_message", recipient="bob", content="review the plan, please",
                                  message_type="question")
            assert (await bob.ok("peek_inbox"))["count"] == 1
            inbox = await bob.ok("check_inbox")
            assert inbox["count"] == 1
            (message,) = inbox["messages"]
            assert message["id"] == sent["message_id"]
            assert (message["sender"], message["recipient"]) == ("alice", "bob")
            assert (message["content"], message["message_type"]) == ("review the plan, please", "question")
            assert (await bob.ok("check_inbox")) == {"messages": [], "count": 0}
            assert (await alice.ok("check_inbox"))["count"] == 0
            history = (await bob.ok("get_history", limit=10))["entries"]
            expected = {("received", sent["message_id"])}
            if phase > 1:  # phase 1 keeps history in each process's memory, as the legacy server did
                expected.add(("sent", sent["message_id"]))
            assert {(e["direction"], e["message_id"]) for e in history} == expected

            poll_id = (await alice.ok("create_poll", question="Ship phase 4?", options=["yes", "no"]))["poll_id"]
            await alice.ok("vote", poll_id=poll_id, option="yes")
            await bob.ok("vote", poll_id=poll_id, option="no")
            poll = (await bob.ok("get_poll", poll_id=poll_id))["poll"]
            assert poll["votes"] == {"alice": "yes", "bob": "no"}
            assert poll["tally"] == {"yes": 1, "no": 1}
            assert poll["creator"] == "alice"
            closed = (await alice.ok("close_poll", poll_id=poll_id))["poll"]
            assert closed["status"] == "closed" and closed["tally"] == {"yes": 1, "no": 1}
            assert [p["id"] for p in (await bob.ok("list_polls", status="closed"))["polls"]] == [poll_id]

    anyio.run(scenario)


def test_two_servers_for_one_agent_never_deliver_a_message_twice(fed):
    """Two servers acting as bob claim his inbox concurrently: every message arrives once, none is lost."""
    sent = [messaging.send_message("alice", "bob", f"message {i}") for i in range(40)]
    received: list[str] = []

    async def drain(bob: AgentClient) -> None:
        for _ in range(5):
            received.extend(m["id"] for m in (await bob.ok("check_inbox"))["messages"])

    async def scenario():
        async with agent_server(fed, "bob") as first, agent_server(fed, "bob") as second:
            async with anyio.create_task_group() as tg:
                tg.start_soon(drain, first)
                tg.start_soon(drain, second)
                for i in range(40, 60):  # more mail arrives while they claim
                    sent.append((await first.ok("send_message", recipient="bob", content=f"m{i}"))["message_id"])
            await drain(second)

    anyio.run(scenario)
    assert sorted(received) == sorted(sent)
    assert len(received) == len(set(received)) == 60


async def _write_everything(alice: AgentClient) -> dict:
    """Write one of each kind of state through alice's server; the ids to read back."""
    await alice.ok("set_context", text="migrating the federation")
    await alice.ok("heartbeat")
    assert (await alice.ok("set_expertise", domains=["sql", "mcp", "sql"]))["domains"] == ["mcp", "sql"]
    await alice.ok("set_profile", default_role="reviewer", traits={"careful": True})
    message_id = (await alice.ok("send_message", recipient="bob", content="still there?"))["message_id"]
    poll_id = (await alice.ok("create_poll", question="Retire the files?", options=["now", "later"]))["poll_id"]
    await alice.ok("vote", poll_id=poll_id, option="later")
    session_id = (await alice.ok("create_session", title="Migration", description="move to SQL"))["session_id"]
    await alice.ok("assign_role", session_id=session_id, agent="bob", role="implementer", subtask="backfill")
    await alice.ok("attach_artifact", session_id=session_id, artifact_type="plan", path="docs/plan.md")
    await alice.ok("review_artifact", session_id=session_id, artifact_type="plan", status="approved",
                   comments="good")
    await alice.ok("set_phase", session_id=session_id, phase="executing")
    return {"message": message_id, "poll": poll_id, "session": session_id}


async def _read_everything(alice: AgentClient, ids: dict) -> dict:
    """What alice's server shows of the state that :func:`_write_everything` wrote."""
    return {
        "context": (await alice.ok("get_context"))["context"],
        "expertise": (await alice.ok("get_expertise"))["domains"],
        "experts": (await alice.ok("find_experts", domain="sql"))["agents"],
        "profile": (await alice.ok("get_profile"))["profile"],
        "own_inbox": (await alice.ok("peek_inbox"))["messages"],
        "poll": (await alice.ok("get_poll", poll_id=ids["poll"]))["poll"],
        "session": (await alice.ok("get_session", session_id=ids["session"]))["session"],
        "agents": (await alice.ok("list_agents"))["agents"],
    }


def _files_agree_with_database(fed, ids: dict) -> None:
    """The JSON files, read alone (phase 1), show exactly what the SQL store, read alone (phase 4), shows."""
    assert json.loads((fed.root / "shared" / "polls.json").read_text())[ids["poll"]]["votes"] == {"alice": "later"}
    assert (fed.root / "shared" / "sessions" / f"{ids['session']}.json").exists()

    def snapshot() -> dict:
        return {
            "context": context.get_context("alice"),
            "expertise": context.get_expertise("alice"),
            "profile": context.get_profile("alice"),
            "inbox": messaging.peek_inbox("bob"),
            "poll": governance.get_poll(ids["poll"]),
            "polls": governance.list_polls(),
            "session": governance.get_session(ids["session"]),
            "agents": context.list_agents(),
        }

    fed.phase(1)
    files = snapshot()
    fed.phase(4)
    database = snapshot()
    assert files == database


@pytest.mark.parametrize("phase", [3, 4])
def test_state_survives_a_server_restart(fed, phase):
    """Stop alice's server and start it again: everything it wrote is still there (phases 3 and 4).

    In phase 3 the legacy files, written second, agree with the database as well.
    """

    async def scenario():
        async with agent_server(fed, "alice", phase) as alice:
            ids = await _write_everything(alice)
            before = await _read_everything(alice, ids)
        async with agent_server(fed, "alice", phase) as alice:
            after = await _read_everything(alice, ids)
        return ids, before, after

    ids, before, after = anyio.run(scenario)
    if phase == 3:
        _files_agree_with_database(fed, ids)
    else:  # phase 4 retired the file path: nothing was written there
        assert not (fed.root / "shared" / "polls.json").exists()
        assert not (fed.root / "nodes").exists()
    fed.phase(phase)
    (message,) = messaging.check_inbox("bob")
    assert after == before
    assert after["context"]["text"] == "migrating the federation" and after["context"]["last_heartbeat"]
    assert after["expertise"] == ["mcp", "sql"] and after["experts"] == ["alice"]
    assert after["profile"]["default_role"] == "reviewer" and after["profile"]["traits"] == {"careful": True}
    assert after["poll"]["votes"] == {"alice": "later"}
    session = after["session"]
    assert session["lead"] == "alice" and session["phase"] == "executing"
    assert session["roles"]["bob"]["role"] == "implementer"
    assert session["artifacts"]["plan"]["path"] == "docs/plan.md"
    assert session["reviews"]["plan"]["alice"]["status"] == "approved"
    assert {"alice", "bob"} <= set(after["agents"])
    assert message["id"] == ids["message"] and message["content"] == "still there?"


def test_no_tool_acts_as_another_agent(fed):
    """Every attempt to act as someone else is refused, and nothing is written as that agent."""

    async def scenario():
        async with agent_server(fed, "alice") as alice, agent_server(fed, "bob") as bob:
            poll_id = (await bob.ok("create_poll", question="Bob's poll", options=["a", "b"]))["poll_id"]
            session_id = (await bob.ok("create_session", title="Bob's session"))["session_id"]
            await bob.ok("attach_artifact", session_id=session_id, artifact_type="code", path="src/x.py")
            await bob.ok("assign_role", session_id=session_id, agent="alice", role="reviewer")  # a member reviews
            await bob.ok("send_message", recipient="alice", content="for alice only")

            attempts = [
                ("send_message", {"recipient": "carol", "content": "forged", "sender": "bob"}),
                ("vote", {"poll_id": poll_id, "option": "a", "voter": "bob"}),
                ("close_poll", {"poll_id": poll_id, "agent": "bob"}),
                ("create_poll", {"question": "q", "options": ["x", "y"], "creator": "bob"}),
                ("check_inbox", {"agent": "bob"}),
                ("peek_inbox", {"agent": "bob"}),
                ("get_history", {"agent": "bob"}),
                ("set_context", {"text": "forged", "agent": "bob"}),
                ("set_expertise", {"domains": ["forgery"], "agent": "bob"}),
                ("set_profile", {"default_role": "forger", "agent": "bob"}),
                ("heartbeat", {"agent": "bob"}),
                ("review_artifact", {"session_id": session_id, "artifact_type": "code", "status": "approved",
                                     "reviewer": "bob"}),
                ("create_session", {"title": "t", "lead": "bob"}),
            ]
            for tool, arguments in attempts:
                text = await alice.error(tool, **arguments)
                assert "unknown argument" in text and "acts as agent 'alice'" in text, (tool, text)

            # The creator alone closes a poll: alice has no way to close bob's.
            assert "refused" in await alice.error("close_poll", poll_id=poll_id)
            # What alice can do is act as herself: her vote and review carry her name, never bob's.
            await alice.ok("vote", poll_id=poll_id, option="b")
            await alice.ok("review_artifact", session_id=session_id, artifact_type="code",
                           status="changes_requested", comments="rename x")
            poll = (await bob.ok("get_poll", poll_id=poll_id))["poll"]
            session = (await bob.ok("get_session", session_id=session_id))["session"]
            bob_inbox = await bob.ok("peek_inbox")
            alice_inbox = await alice.ok("check_inbox")
            bob_context = (await alice.ok("get_context", agent="bob"))["context"]
            bob_expertise = (await alice.ok("get_expertise", agent="bob"))["domains"]
            bob_profile = (await alice.ok("get_profile", agent="bob"))["profile"]
            carol_inbox = (await alice.ok("list_agents"))["agents"]
            return poll, session, bob_inbox, alice_inbox, bob_context, bob_expertise, bob_profile, carol_inbox

    poll, session, bob_inbox, alice_inbox, bob_context, bob_expertise, bob_profile, agents = anyio.run(scenario)
    assert poll["status"] == "open" and poll["votes"] == {"alice": "b"}
    assert list(session["reviews"]["code"]) == ["alice"]
    assert bob_inbox["count"] == 0  # alice never read bob's inbox, nobody wrote to it
    assert [m["content"] for m in alice_inbox["messages"]] == ["for alice only"]
    assert bob_context is None and bob_expertise == [] and bob_profile is None
    assert "carol" not in agents  # the forged message was never sent


def test_bad_arguments_give_tool_errors_and_the_server_keeps_serving(fed):
    """Missing, mistyped and unknown arguments, unknown ids and tools: each a tool error, then business as usual."""

    async def scenario():
        async with agent_server(fed, "alice") as alice:
            poll_id = (await alice.ok("create_poll", question="Q?", options=["x", "y"]))["poll_id"]
            cases = [
                ("vote", {"poll_id": poll_id}, "missing required argument(s) option"),
                ("send_message", {"content": "hi"}, "missing required argument(s) recipient"),
                ("create_poll", {"question": "Q?", "options": 3}, "options"),
                ("get_history", {"limit": "lots"}, "limit"),
                ("get_history", {"limit": 0}, "limit"),
                ("send_message", {"recipient": "bob", "content": 42}, "content"),
                ("review_artifact", {"session_id": "s1", "artifact_type": "plan", "status": "lgtm"},
                 "'approved' or 'changes_requested'"),
                ("list_polls", {"status": "pending"}, "status"),
                ("vote", {"poll_id": "no-such-poll", "option": "x"}, "not found: poll no-such-poll"),
                ("get_poll", {"poll_id": "no-such-poll"}, "not found"),
                ("get_session", {"session_id": "no-such-session"}, "not found"),
                ("vote", {"poll_id": poll_id, "option": "z"}, "invalid argument"),
                ("create_poll", {"question": "Q?", "options": ["only"]}, "at least 2"),
                ("send_message", {"recipient": "../etc", "content": "x"}, "not a valid agent name"),
                ("send_message", {"recipient": "bob", "content": "x" * (64 * 1024 + 1)}, "limit"),
                ("get_context", {"agent": "bad/name"}, "not a valid agent name"),
                ("no_such_tool", {}, "Unknown tool"),
            ]
            kinds = ("invalid argument: ", "not found: ", "refused: ", "Unknown tool")  # the text starts with its kind
            for tool, arguments, expected in cases:
                text = await alice.error(tool, **arguments)
                assert expected in text and text.startswith(kinds), (tool, text)
            await alice.ok("close_poll", poll_id=poll_id)
            assert "refused" in await alice.error("vote", poll_id=poll_id, option="x")
            # Still serving, and none of the failures wrote anything.
            assert (await alice.ok("list_polls"))["polls"][0]["votes"] == {}
            assert (await alice.ok("send_message", recipient="bob", content="still here"))["message_id"]
            assert (await alice.ok("list_sessions"))["sessions"] == []
            return alice.stderr

    stderr = anyio.run(scenario)
    assert "Traceback" not in stderr.read_text()  # expected failures are not crashes


def test_stdout_carries_only_protocol(fed):
    """Raw stdio: every line the server writes on stdout is a JSON-RPC message, failures included."""
    requests = [
        {"jsonrpc": "2.0", "id": 1, "method": "initialize",
         "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                    "clientInfo": {"name": "raw", "version": "0"}}},
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
         "params": {"name": "vote", "arguments": {"poll_id": "nope", "option": "x"}}},
        {"jsonrpc": "2.0", "id": 3, "method": "tools/call",
         "params": {"name": "send_message", "arguments": {"recipient": "bob", "content": "hi"}}},
    ]
    proc = subprocess.Popen([sys.executable, "-m", "federation", "serve", "--agent", "alice"], text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=fed.subprocess_env(3), cwd=str(REPO))
    replies = []
    try:
        for request in requests:
            proc.stdin.write(json.dumps(request) + "\n")
            proc.stdin.flush()
            if "id" in request:  # wait for the answer before the next request (and before EOF)
                replies.append(json.loads(proc.stdout.readline()))
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert out == ""  # nothing after the last reply either
    assert [r["jsonrpc"] for r in replies] == ["2.0"] * 3 and [r["id"] for r in replies] == [1, 2, 3]
    assert replies[1]["result"]["isError"] is True
    assert replies[2]["result"]["isError"] is False
    events = [json.loads(line)["event"] for line in err.splitlines()]
    assert "mcp_server_started" in events and "tool_refused" in events


@pytest.mark.parametrize(("agent", "env", "expected"), [
    ("../root", {}, "not a valid agent name"),
    ("", {}, "not a valid agent name"),
    ("alice", {"FEDERATION_PHASE": "5"}, "FEDERATION_PHASE='5' is not accepted"),
])
def test_serve_refuses_a_bad_agent_name_or_setting(fed, agent, env, expected):
    """``serve`` with an unsafe agent name or a bad variable exits 2 with a clear message and no stdout."""
    proc = subprocess.run([sys.executable, "-m", "federation", "serve", "--agent", agent], capture_output=True,
                          text=True, env={**fed.subprocess_env(3), **env}, cwd=str(REPO), timeout=60,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert expected in proc.stderr


def test_database_never_backfilled_is_a_tool_error_that_names_the_fix(fed):
    """Phase 3 over legacy files that were never migrated: each tool call says to run the migration."""
    fed.phase(1)
    context.set_context("old-timer", "written before the database existed")

    async def scenario():
        async with agent_server(fed, "alice", 3) as alice:
            first = await alice.error("get_context", agent="old-timer")
            second = await alice.error("send_message", recipient="old-timer", content="hello?")
            return first, second

    for text in anyio.run(scenario):
        assert "database not ready" in text and "federation migrate" in text


@pytest.mark.parametrize(("exc", "expected"), [
    (StorageError("database is locked after 5 retries"), "storage unavailable, try again shortly"),
    (ValidationError("content is empty"), "invalid argument: content is empty"),
    (NotFoundError("gone"), "not found: gone"),
    (ConflictError("poll is closed"), "refused: poll is closed"),
    (RuntimeError("secret internals"), "internal error (RuntimeError)"),
])
def test_every_failure_becomes_a_tool_error(fed, monkeypatch, exc, expected):
    """Storage, domain and unexpected errors are tool errors; a crash is logged with its traceback."""

    def broken(*args, **kwargs):
        raise exc

    monkeypatch.setattr(messaging, "send_message", broken)

    async def scenario():
        async with Client(build_server("alice")) as client:
            failed = await client.call_tool("send_message", {"recipient": "bob", "content": "hi"})
            served = await client.call_tool("heartbeat", {})
            return failed, served

    with capture_logs() as logs:
        failed, served = anyio.run(scenario)
    assert failed.is_error and failed.content[0].text.startswith(expected), failed.content[0].text
    assert "secret internals" not in failed.content[0].text
    assert not served.is_error
    crashed = [e for e in logs if e["event"] == "tool_crashed"]
    if isinstance(exc, RuntimeError):
        assert crashed and crashed[0]["tool"] == "send_message" and crashed[0]["exc_info"] is True
    else:
        assert not crashed


def test_tools_call_answers_as_the_sdk_handler_does(fed):
    """The servers' own ``tools/call`` handler (tools prepared once, no per-call Context) gives, on every
    protocol version, the wire result the SDK's handler gives for the same call: successes (text and
    structured content, non-ASCII and None values included), refused and invalid arguments, tool errors;
    and the HTTP server acts as the agent of the request's scope either way."""
    from mcp.server.context import ServerRequestContext
    from mcp.server.mcpserver import MCPServer
    from mcp_types import CallToolRequestParams
    from mcp_types import methods
    from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS, MODERN_PROTOCOL_VERSIONS

    from federation.apps.mcp_http import AGENT_KEY, HttpFederationServer

    messaging.send_message("bob", "alice", 'h\u00e9llo \U0001f600 "quoted"\n<tag> \\ end')
    context.set_context("alice", "working on \u00e9t\u00e9")
    calls = [("peek_inbox", {}), ("get_context", {}), ("list_agents", {}), ("get_history", {"limit": "2"}),
             ("peek_inbox", {"sender": "bob"}), ("get_history", {"limit": 0}), ("get_poll", {"poll_id": "nope"}),
             ("get_history", {"limit": "[1]"}), ("ack", {"ids": '["no-such-id"]'}), ("ack", {"ids": "not json"}),
             ("send_message", {"recipient": "bob"}), ("no_such_tool", {})]

    class Request:  # what the gate hands the endpoint: the agent in the request's scope
        scope = {AGENT_KEY: "alice"}

    http_ctx = ServerRequestContext(session=None, lifespan_context=None, method="tools/call", params={},
                                    request_id=1, meta=None, protocol_version="2025-11-25", request=Request())
    servers = [(build_server("alice"), None), (HttpFederationServer(name="federation"), http_ctx)]

    async def both() -> list[tuple[str, Any, Any]]:
        out = []
        for server, ctx in servers:
            assert server._lowlevel_server.get_request_handler("tools/call").handler == server._handle_call_tool
            for name, arguments in calls:
                params = CallToolRequestParams(name=name, arguments=arguments)
                out.append((name, await server._handle_call_tool(ctx, params),
                            await MCPServer._handle_call_tool(server, ctx, params)))
        return out

    def wire(result: Any) -> dict:
        return result if isinstance(result, dict) else result.model_dump(by_alias=True, mode="json", exclude_none=True)

    answered = anyio.run(both)
    fast = [name for name, ours, _ in answered if isinstance(ours, dict)]
    assert sorted(set(fast)) == ["ack", "get_context", "get_history", "list_agents", "peek_inbox"]  # the prepared path ran
    for name, ours, sdks in answered:
        for version in (*HANDSHAKE_PROTOCOL_VERSIONS, *MODERN_PROTOCOL_VERSIONS):
            assert (methods.serialize_server_result("tools/call", version, wire(ours))
                    == methods.serialize_server_result("tools/call", version, wire(sdks))), (name, version)
    errors = {name: wire(ours)["content"][0]["text"] for name, ours, _ in answered if wire(ours)["isError"]}
    assert errors["peek_inbox"].startswith("invalid argument: unknown argument(s) sender")
    assert errors["get_history"].startswith("invalid argument: limit:")
    assert errors["get_poll"].startswith("not found")
    assert "h\u00e9llo \U0001f600" in json.dumps(wire(answered[0][1])["structuredContent"], ensure_ascii=False)


def test_opentelemetry_middleware_only_with_an_opentelemetry_sdk(monkeypatch):
    """Without an OpenTelemetry SDK the SDK's tracing middleware (no-op spans) is left out; with one it stays."""
    from mcp.server._otel import OpenTelemetryMiddleware

    from federation.apps import mcp_server

    def traced() -> bool:
        return any(isinstance(m, OpenTelemetryMiddleware) for m in build_server("alice")._lowlevel_server.middleware)

    monkeypatch.setattr(mcp_server, "_tracing_installed", lambda: False)
    assert not traced()
    monkeypatch.setattr(mcp_server, "_tracing_installed", lambda: True)
    assert traced()


# ---------------------------------------------------------------------------
# the per-tick calls (issue 11): pages of at most 100 with a "next" cursor, pulse, broadcast, receipts


def test_list_tools_return_at_most_100_records_and_a_next_cursor(fed):
    """list_polls, list_sessions, get_history, sent_messages: pages of <= 100 whose cursors reach every record once."""
    fed.phase(4)
    polls = [governance.create_poll("carol", f"Q{i}?", ["a", "b"]) for i in range(150)]
    sessions = [governance.create_session("carol", f"S{i}") for i in range(101)]
    sent = [messaging.send_message("alice", "bob", f"m{i}") for i in range(130)]

    async def walk(client, tool, key, cursor_arg, **arguments):
        pages, cursor = [], None
        while True:
            args = dict(arguments, **({cursor_arg: cursor} if cursor else {}))
            result = await client.ok(tool, **args)
            assert len(result[key]) <= 100
            pages.append(result[key])
            cursor = result["next"]
            if cursor is None:
                return pages

    async def scenario():
        async with agent_server(fed, "alice", 4) as alice, agent_server(fed, "bob", 4) as bob:
            poll_pages = await walk(alice, "list_polls", "polls", "after")
            assert [len(p) for p in poll_pages] == [100, 50]
            assert [p["id"] for page in poll_pages for p in page] == polls
            assert [len(p) for p in await walk(alice, "list_polls", "polls", "after", status="open", limit=60)] == [
                60, 60, 30]
            session_pages = await walk(alice, "list_sessions", "sessions", "after")
            assert [s["id"] for page in session_pages for s in page] == sessions
            sent_pages = await walk(alice, "sent_messages", "messages", "before")
            assert [len(p) for p in sent_pages] == [100, 30]
            assert [m["id"] for page in reversed(sent_pages) for m in page] == sent  # pages go back in time
            history_pages = await walk(bob, "get_history", "entries", "before")
            assert [len(p) for p in history_pages] == [100, 30]
            assert [e["message_id"] for page in reversed(history_pages) for e in page] == sent
            for tool in ("list_polls", "list_sessions", "get_history", "sent_messages"):
                assert "limit" in await alice.error(tool, limit=101)
                assert "limit" in await alice.error(tool, limit=0)
            assert "invalid argument: after 'nosuch' is not the id of a poll" in await alice.error(
                "list_polls", after="nosuch")
            assert "invalid argument" in await alice.error("get_history", before="sent:nosuch")

    anyio.run(scenario)


@pytest.mark.parametrize("phase", [1, 3])
def test_pulse_broadcast_and_read_receipts_over_stdio(fed, phase):
    """A broadcast to a role reaches its holder's pulse once; the sender sees the receipt (phase 2 on)."""

    async def scenario():
        async with agent_server(fed, "alice", phase) as alice, agent_server(fed, "bob", phase) as bob:
            await bob.ok("set_profile", default_role="reviewer")
            await alice.ok("set_context", text="leading")
            poll_id = (await alice.ok("create_poll", question="Ship?", options=["yes", "no"]))["poll_id"]
            assert (await alice.ok("broadcast", content="nobody", role="astronaut")) == {"message_ids": [],
                                                                                        "count": 0}
            sent = await alice.ok("broadcast", content="please review", role="reviewer")
            assert sent["count"] == 1
            beat = await bob.ok("pulse")
            assert [m["id"] for m in beat["messages"]] == sent["message_ids"]
            assert [p["id"] for p in beat["open_polls"]] == [poll_id]
            assert {a["agent"]: a["text"] for a in beat["agents"]}["alice"] == "leading"
            assert beat["phase"] == phase
            again = await bob.ok("pulse", claim=False)
            assert again["messages"] == []
            await bob.ok("vote", poll_id=poll_id, option="yes")
            assert (await bob.ok("pulse"))["open_polls"] == []
            receipts = (await alice.ok("sent_messages"))["messages"]
            assert [m["id"] for m in receipts] == sent["message_ids"]
            if phase > 1:
                assert receipts[0]["read_at"] is not None
            else:  # phase 1: the legacy files keep no receipts
                assert receipts[0]["read_at"] is None
            assert "unknown argument(s) agent" in await alice.error("pulse", agent="bob")
            assert "unknown argument(s) sender" in await alice.error("broadcast", content="x", sender="bob")

    anyio.run(scenario)


@pytest.mark.parametrize("phase", [1, 4])
def test_receive_ack_and_pulse_wait_over_stdio(fed, phase):
    """receive leases (attempt 1), ack completes; a keyed send is sent once; pulse(wait) returns on a send."""

    async def scenario():
        async with agent_server(fed, "alice", phase) as alice, agent_server(fed, "bob", phase) as bob:
            first = (await alice.ok("send_message", recipient="bob", content="job", idempotency_key="j1"))
            again = (await alice.ok("send_message", recipient="bob", content="job", idempotency_key="j1"))
            assert first == again
            got = await bob.ok("receive", lease=30)
            assert [(m["id"], m["attempt"]) for m in got["messages"]] == [(first["message_id"], 1)]
            assert got["messages"][0]["lease_until"]
            assert (await bob.ok("receive", lease=30))["count"] == 0  # leased: not delivered again
            assert await bob.ok("ack", ids=[first["message_id"]]) == {"acked": [first["message_id"]], "count": 1}
            assert (await bob.ok("ack", ids=[first["message_id"]]))["count"] == 0
            assert "invalid argument" in await bob.error("receive", lease=0)

            async def send_later():
                await anyio.sleep(1.5)
                return await alice.ok("send_message", recipient="bob", content="wake up")

            result = {}

            async def wait_for_it():
                t0 = time.monotonic()
                result["tick"] = await bob.ok("pulse", lease=30, wait=20)
                result["waited"] = time.monotonic() - t0

            async with anyio.create_task_group() as tg:
                tg.start_soon(wait_for_it)
                sent = await send_later()
            assert [m["id"] for m in result["tick"]["messages"]] == [sent["message_id"]]
            assert 1.0 < result["waited"] < 15
            done = await bob.ok("pulse", ack=[sent["message_id"]])
            assert done["acked"] == [sent["message_id"]] and done["messages"] == []

    anyio.run(scenario)


def test_a_client_that_dies_mid_reply_ends_the_server_quietly(fed):
    """The client closes its end of stdout before reading the reply to `initialize` and then stdin: the
    server exits 0, logs `mcp_server_stopped` (signal "client gone") and prints no traceback (issue 29)."""
    import json as _json
    import subprocess
    import sys
    import time

    proc = subprocess.Popen([sys.executable, "-m", "federation", "serve", "--agent", "alice"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=fed.subprocess_env())
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
    proc.stdin.write((_json.dumps(init) + "\n").encode())
    proc.stdin.flush()
    time.sleep(1.0)
    proc.stdout.close()  # gone before the reply is read
    try:
        for n in range(3):
            proc.stdin.write((_json.dumps({"jsonrpc": "2.0", "id": 2 + n, "method": "tools/list"}) + "\n").encode())
            proc.stdin.flush()
            time.sleep(0.3)
        proc.stdin.close()
    except BrokenPipeError:
        pass
    assert proc.wait(timeout=60) == 0
    err = proc.stderr.read().decode()
    assert "Traceback" not in err and "client gone" in err, err[-2000:]
