"""`federation serve --http`: one real server process, agents through the official SDK's Streamable HTTP client,
each acting as the agent its bearer token names; tokens from `federation agents add|list|revoke`."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator

import anyio
import pytest
from _procs import wait_for as _wait_for
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from federation.apps import agent_tokens
from federation import context, messaging
from federation.apps.mcp_server import TOOL_NAMES
from test_mcp_server import AgentClient

REPO = Path(__file__).resolve().parent.parent
#: short control-plane intervals, so the tests see in a second what production sees in 5-30 s
FAST = {"FEDERATION_FLEET_REFRESH": "0.25", "FEDERATION_FLEET_TIMEOUT": "3", "FEDERATION_COUNTS_FLUSH": "0.25",
        "FEDERATION_COUNTS_BUCKET": "1", "FEDERATION_FLAG_CHECK": "0.25"}




class HttpServer:
    """A real `python -m federation serve --http` process on a free port; its stderr (and log) in files."""

    def __init__(self, fed, *args: str, env: dict[str, str] | None = None, log_file: Path | None = None,
                 preexec_fn: Any = None):
        self.stderr_path = fed.root.parent / f"serve-http-{time.monotonic_ns()}.stderr"
        env = dict(env if env is not None else fed.subprocess_env())
        if log_file is not None:
            env["FEDERATION_LOG_FILE"] = str(log_file)
        with self.stderr_path.open("w") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "federation", "serve", "--http", "--port", "0", *args],
                                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, env=env,
                                         cwd=str(REPO), text=True, preexec_fn=preexec_fn)
        try:
            line = _wait_for(self._listening, 60, what="the HTTP server to listen")
        except BaseException:  # never leave a server behind a test that could not start it
            self.stop()
            raise
        self.url = line.split(" on ", 1)[1].split(";", 1)[0].strip()

    def _listening(self) -> str | None:
        if self.proc.poll() is not None:
            raise AssertionError(f"the server exited ({self.proc.returncode}): {self.stderr()[-3000:]}")
        return next((ln for ln in self.stderr().splitlines() if ln.startswith("federation MCP over HTTP on ")), None)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> float:
        """Send *sig*; wait for the exit; seconds it took."""
        if self.proc.poll() is not None:
            return 0.0
        self.proc.send_signal(sig)
        started = time.monotonic()
        try:
            self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        return time.monotonic() - started

    def __enter__(self) -> "HttpServer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


@asynccontextmanager
async def http_agent(url: str, token: str, name: str = "?") -> AsyncIterator[AgentClient]:
    """An initialised session of the official SDK's Streamable HTTP client, with the agent's bearer token."""
    async with create_mcp_http_client(headers={"Authorization": f"Bearer {token}"}) as client:
        async with streamable_http_client(url, http_client=client) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                yield AgentClient(name, session)


def post(url: str, body: dict | None = None, **headers: str) -> tuple[int, dict, str]:
    """A raw MCP POST (status, response headers, body), for what the SDK client does not let a test vary."""
    data = json.dumps(body or {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}).encode()
    request = urllib.request.Request(url, data=data, method="POST", headers={
        "Content-Type": "application/json", "Accept": "application/json, text/event-stream",
        "MCP-Protocol-Version": "2025-06-18", **{k.replace("_", "-"): v for k, v in headers.items()}})
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, dict(resp.headers), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read().decode()


def tokens(fed, *names: str) -> dict[str, str]:
    return {name: agent_tokens.add(name, fed.root)[0] for name in names}


def cli(fed, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "federation", *args], env=env or fed.subprocess_env(),
                          capture_output=True, text=True, timeout=120, cwd=str(REPO))


# -- identity ---------------------------------------------------------------------------------------

def test_each_request_acts_as_the_agent_its_token_names(fed):
    """alice sends to bob, bob receives it from alice; alice cannot send or vote as bob by any argument;
    both votes count, each under its own name; tools/list is the stdio server's."""
    t = tokens(fed, "alice", "bob")
    with HttpServer(fed) as server:
        async def scenario():
            async with http_agent(server.url, t["alice"], "alice") as alice, \
                    http_agent(server.url, t["bob"], "bob") as bob:
                listed = await alice.session.list_tools()
                assert {tool.name for tool in listed.tools} == set(TOOL_NAMES)
                sent = await alice.ok("send_message", recipient="bob", content="hello bob")
                got = await bob.ok("check_inbox")
                assert [(m["id"], m["sender"], m["recipient"], m["content"]) for m in got["messages"]] == \
                    [(sent["message_id"], "alice", "bob", "hello bob")]
                refused = await alice.error("send_message", recipient="carol", content="x", sender="bob")
                assert "unknown argument" in refused and "identity is not an argument" in refused
                assert "'alice'" in refused
                poll = (await alice.ok("create_poll", question="Ship?", options=["yes", "no"]))["poll_id"]
                assert "unknown argument" in await bob.error("vote", poll_id=poll, option="no", voter="alice")
                assert refused.startswith("invalid argument: ")  # the kind first, over HTTP as over stdio
                assert (await bob.error("vote", poll_id="nope", option="no")).startswith("not found: ")
                await alice.ok("vote", poll_id=poll, option="yes")
                await bob.ok("vote", poll_id=poll, option="no")
                closed = await alice.ok("close_poll", poll_id=poll)
                assert closed["poll"]["votes"] == {"alice": "yes", "bob": "no"}
                assert "refused" in await bob.error("close_poll", poll_id=poll)  # only its creator, alice
                # reading another agent's public state stays allowed
                await bob.ok("set_context", text="bob at work")
                assert (await alice.ok("get_context", agent="bob"))["context"]["text"] == "bob at work"
                assert (await bob.ok("pulse"))["agent"] == "bob"

        anyio.run(scenario)
    assert [(m["sender"], m["recipient"]) for m in messaging.get_sent("alice", 10)] == [("alice", "bob")]
    assert messaging.get_sent("bob", 10) == []


# -- refusals -----------------------------------------------------------------------------------------

@pytest.mark.sqlite_only
def test_no_wrong_or_revoked_token_is_401_and_revocation_needs_no_restart(fed):
    """No Authorization, a wrong token, another scheme: 401 with WWW-Authenticate; the official client fails
    to connect; `federation agents revoke` makes a working token 401 within seconds, the server still up;
    `agents add` again replaces the token (the old one is refused, the new one works)."""
    t = tokens(fed, "alice")
    with HttpServer(fed) as server:
        status, headers, _ = post(server.url, Authorization=f"Bearer {t['alice']}")
        assert status == 200
        for auth in (None, "Bearer", "Bearer " + "x" * 43, f"Basic {t['alice']}", f"Bearer {t['alice']}x"):
            status, headers, body = post(server.url, **({"Authorization": auth} if auth else {}))
            assert status == 401, (auth, status, body)
            assert headers.get("www-authenticate", "").startswith("Bearer")

        async def connect(token: str):
            with anyio.fail_after(30):
                async with http_agent(server.url, token) as agent:
                    await agent.ok("heartbeat")

        with pytest.raises(Exception):
            anyio.run(connect, "not-a-token")
        anyio.run(connect, t["alice"])
        revoked = cli(fed, "agents", "revoke", "alice")
        assert revoked.returncode == 0, revoked.stderr
        _wait_for(lambda: post(server.url, Authorization=f"Bearer {t['alice']}")[0] == 401, 5,
                  what="the revoked token to be refused")
        with pytest.raises(Exception):
            anyio.run(connect, t["alice"])
        fresh = json.loads(cli(fed, "agents", "add", "alice", "--json").stdout)
        _wait_for(lambda: post(server.url, Authorization=f"Bearer {fresh['token']}")[0] == 200, 5,
                  what="the new token to be accepted")
        assert post(server.url, Authorization=f"Bearer {t['alice']}")[0] == 401
        assert server.proc.poll() is None


@pytest.mark.sqlite_only
def test_a_foreign_origin_or_host_is_refused(fed):
    """With a valid token, a request from a web page elsewhere (Origin) is 403, a rebinding Host is 421;
    no Origin (an agent's client) or a loopback Origin is served."""
    t = tokens(fed, "alice")
    auth = f"Bearer {t['alice']}"
    with HttpServer(fed) as server:
        for origin in ("https://evil.example", "http://attacker.test:8765", "null", "file://"):
            status, _, body = post(server.url, Authorization=auth, Origin=origin)
            assert status == 403, (origin, status, body)
        status, _, _ = post(server.url, Origin="https://evil.example")  # refused before the token is looked at
        assert status == 403
        assert post(server.url, Authorization=auth, Host="evil.example:8765")[0] == 421
        assert post(server.url, Authorization=auth)[0] == 200
        port = server.url.rsplit(":", 1)[1].split("/")[0]
        assert post(server.url, Authorization=auth, Origin=f"http://localhost:{port}")[0] == 200


def _non_loopback_address() -> str | None:
    """An address of this machine that is not loopback (None when it has none)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outgoing interface
            address = s.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


@pytest.mark.sqlite_only
def test_loopback_by_default_and_a_warning_when_exposed(fed):
    """The default binds 127.0.0.1 only: the machine's other address refuses the connection.  --host
    0.0.0.0 is reachable there, and says (stderr and the log) that TLS belongs in front of it."""
    t = tokens(fed, "alice")
    address = _non_loopback_address()
    with HttpServer(fed) as server:
        assert server.url.startswith("http://127.0.0.1:")
        port = int(server.url.rsplit(":", 1)[1].split("/")[0])
        assert "warning" not in server.stderr()
        if address is not None:
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection((address, port), timeout=5).close()
    with HttpServer(fed, "--host", "0.0.0.0") as exposed:
        err = exposed.stderr()
        assert "warning: 0.0.0.0 is not loopback" in err and "TLS" in err
        assert any(json.loads(ln).get("event") == "mcp_http_exposed" for ln in err.splitlines() if ln.startswith("{"))
        if address is not None:
            port = exposed.url.rsplit(":", 1)[1].split("/")[0]
            assert post(f"http://{address}:{port}/mcp", Authorization=f"Bearer {t['alice']}")[0] == 200


# -- concurrency -------------------------------------------------------------------------------------

def test_twelve_agents_at_once_each_doing_ten_calls(fed):
    """12 SDK clients at once on one server, 10 calls each (sends to the next agent, pulses, votes): every
    message arrives once, from its sender, and every vote counts under its voter."""
    names = [f"agent-{i:02d}" for i in range(12)]
    t = tokens(fed, *names)
    from federation import governance

    poll = governance.create_poll("agent-00", "Which?", ["a", "b"])
    received: dict[str, list[dict]] = {n: [] for n in names}

    async def one(name: str, url: str) -> None:
        nxt = names[(names.index(name) + 1) % len(names)]
        async with http_agent(url, t[name], name) as agent:
            for i in range(4):
                await agent.ok("send_message", recipient=nxt, content=f"{name} #{i}")
            await agent.ok("vote", poll_id=poll, option="a" if names.index(name) % 2 else "b")
            for _ in range(5):
                received[name] += (await agent.ok("pulse"))["messages"]

    with HttpServer(fed) as server:
        async def scenario():
            with anyio.fail_after(240):
                async with anyio.create_task_group() as tg:
                    for name in names:
                        tg.start_soon(one, name, server.url)
            # what arrived after an agent's last pulse
            for name in names:
                async with http_agent(server.url, t[name], name) as agent:
                    received[name] += (await agent.ok("check_inbox"))["messages"]

        anyio.run(scenario)
    for i, name in enumerate(names):
        prev = names[i - 1]
        assert sorted(m["content"] for m in received[name]) == [f"{prev} #{k}" for k in range(4)], name
        assert {m["sender"] for m in received[name]} == {prev}
    assert governance.get_poll(poll)["votes"] == {n: "a" if i % 2 else "b" for i, n in enumerate(names)}


def test_pulse_wait_returns_soon_after_a_send_and_waiting_calls_are_bounded(fed):
    """bob's pulse(wait=20) returns within a couple of seconds of alice's send, with the message; while
    4 of bob's pulses wait, a 5th is a tool error (others' calls go on); when they return, bob may wait again."""
    from federation.apps.mcp_http import MAX_WAITING_PER_AGENT

    t = tokens(fed, "alice", "bob", "carol")
    with HttpServer(fed) as server:
        async def scenario():
            async with http_agent(server.url, t["alice"], "alice") as alice, \
                    http_agent(server.url, t["bob"], "bob") as bob:
                got: dict = {}

                async def waiting():
                    started = time.monotonic()
                    got["result"] = await bob.ok("pulse", wait=20)
                    got["returned"] = time.monotonic()
                    got["waited"] = got["returned"] - started

                with anyio.fail_after(60):
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(waiting)
                        await anyio.sleep(1.5)  # bob is waiting now
                        assert "result" not in got
                        sent_at = time.monotonic()
                        sent = await alice.ok("send_message", recipient="bob", content="wake up")
                assert [m["id"] for m in got["result"]["messages"]] == [sent["message_id"]]
                assert got["returned"] - sent_at < 2.5, got["returned"] - sent_at
                assert got["waited"] >= 1.4

                # the bound: MAX_WAITING_PER_AGENT of bob's pulses wait; one more is refused at once
                async with http_agent(server.url, t["bob"], "bob") as bob2, \
                        http_agent(server.url, t["carol"], "carol") as carol:
                    with anyio.fail_after(60):
                        async with anyio.create_task_group() as tg:
                            for _ in range(MAX_WAITING_PER_AGENT):
                                tg.start_soon(lambda: bob.session.call_tool("pulse", {"wait": 6}))
                            await anyio.sleep(2.0)
                            started = time.monotonic()
                            refused = await bob2.error("pulse", wait=6)
                            assert "already waiting" in refused and time.monotonic() - started < 2
                            assert (await carol.ok("pulse", wait=1))["agent"] == "carol"  # others unaffected
                            assert (await bob2.ok("pulse"))["agent"] == "bob"  # without wait: served
                    assert (await bob2.ok("pulse", wait=0.5))["messages"] == []  # free again

        anyio.run(scenario)


# -- the fleet, the flag, the stop --------------------------------------------------------------------

@pytest.mark.sqlite_only
def test_announced_follows_the_flag_counts_and_stops_cleanly_on_sigterm(fed):
    """An unpinned HTTP server is in the fleet from its start (agent `http@HOST:PORT`), follows `rollout set 2`
    within seconds, counts the compared calls; SIGTERM: exit 0 within seconds, counts on disk, announcement
    withdrawn, the stop logged with the signal."""
    context.set_context("probe", "on both sides")
    t = tokens(fed, "alice")
    env = {k: v for k, v in fed.subprocess_env().items()
           if k not in ("FEDERATION_USE_DB", "FEDERATION_PHASE", "FEDERATION_SHADOW_SAMPLE")}
    env.update(FAST)
    server = HttpServer(fed, env=env)
    pid = server.proc.pid
    fleet_file = fed.root / "control" / "fleet" / f"{socket.gethostname()}-{pid}.json"
    try:
        entry = _wait_for(lambda: fleet_file.exists() and json.loads(fleet_file.read_text()), 10, what="announced")
        assert entry["agent"].startswith("http@127.0.0.1:") and entry["phase"] == 3
        assert cli(fed, "rollout", "set", "2", env=env).returncode == 0
        _wait_for(lambda: json.loads(fleet_file.read_text())["phase"] == 2, 10, what="the server in phase 2")

        async def reads():
            async with http_agent(server.url, t["alice"], "alice") as alice:
                for _ in range(5):
                    assert (await alice.ok("get_context", agent="probe"))["context"]["text"] == "on both sides"

        anyio.run(reads)
        stopped_in = server.stop(signal.SIGTERM)
    finally:
        server.stop(signal.SIGKILL)
    assert server.proc.returncode == 0, server.stderr()[-3000:]
    assert stopped_in < 15
    assert not fleet_file.exists()
    counted = 0
    for path in (fed.root / "control" / "counts").glob(f"*/{socket.gethostname()}-{pid}-*.json"):
        counted += sum(c["comparisons"] for c in json.loads(path.read_text())["cells"] if c["entity"] == "context")
    assert counted >= 5
    events = [json.loads(ln) for ln in server.stderr().splitlines() if ln.startswith("{")]
    assert any(e["event"] == "mcp_http_stopped" and e.get("signal") == "SIGTERM" for e in events)


# -- the answer of one request: the SDK's kernel in the request's task, the same as the SDK's transport -----

@pytest.mark.sqlite_only
def test_one_request_is_answered_as_the_sdks_stateless_transport_answers_it(fed):
    """Each request below, POSTed with a Content-Length (answered in the request's task with the SDK's
    serve_one) and chunked (no length: the SDK's own stateless transport answers it), gets the same status
    and the same JSON-RPC reply: results, tool errors, unknown methods and tools, invalid params."""
    import http.client

    t = tokens(fed, "alice", "bob")
    bodies = [
        {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}},
        {"jsonrpc": "2.0", "id": "two", "method": "ping"},
        {"jsonrpc": "2.0", "id": 3, "method": "tools/list"},
        {"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": {"name": "get_context", "arguments": {}}},
        {"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"name": "get_poll",
                                                                       "arguments": {"poll_id": "nope"}}},
        {"jsonrpc": "2.0", "id": 6, "method": "tools/call", "params": {"name": "vote", "arguments": {"x": 1}}},
        {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "no_such_tool", "arguments": {}}},
        {"jsonrpc": "2.0", "id": 8, "method": "no/such/method"},
        {"jsonrpc": "2.0", "id": 9, "method": "tools/call", "params": {"name": 42}},
        {"jsonrpc": "2.0", "id": 10, "method": "tools/call", "params": {
            "name": "send_message", "arguments": {"recipient": "bob", "content": "x", "sender": "bob"}}},
        {"jsonrpc": "2.0", "id": 11, "method": "tools/call", "params": {
            "name": "set_context", "arguments": {"text": "héllo \u2603 \U0001f600"}}},
        {"jsonrpc": "2.0", "id": 12, "method": "tools/call", "params": {"name": "get_context", "arguments": {}}},
    ]
    with HttpServer(fed) as server:
        host, port = server.url.split("/")[2].rsplit(":", 1)
        headers = {"Authorization": f"Bearer {t['alice']}", "Content-Type": "application/json",
                   "Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2025-06-18"}

        def answer(body: dict, chunked: bool) -> tuple[int, Any]:
            conn = http.client.HTTPConnection(host, int(port), timeout=30)
            data = json.dumps(body).encode()
            if chunked:
                conn.request("POST", "/mcp", iter([data[:7], data[7:]]), headers, encode_chunked=True)
            else:
                conn.request("POST", "/mcp", data, headers)
            response = conn.getresponse()
            text = response.read()
            conn.close()
            return response.status, json.loads(text) if text else None

        for body in bodies:
            fast, sdk = answer(body, chunked=False), answer(body, chunked=True)
            assert fast == sdk, (body, fast, sdk)
            assert fast[0] == 200 and fast[1]["id"] == body["id"], fast
        # what only the SDK's transport answers: a notification (202), a batch, bad JSON
        assert answer({"jsonrpc": "2.0", "method": "notifications/initialized"}, chunked=False)[0] == 202
        assert answer([bodies[1]], chunked=False)[0] == 400 and answer([bodies[1]], chunked=True)[0] == 400


def test_a_reply_body_carries_any_string_a_tool_returns():
    """The endpoint's reply is JSON that reads back as the reply, for every string: UTF-8 as pydantic-core
    writes it, and ASCII with escapes (the stdlib's) for a string UTF-8 cannot carry (a lone surrogate)."""
    from federation.apps.http_wire import json_body

    for text in ("plain", "h\u00e9llo \u2603 \U0001f600 \"q\" \\ \n </tag>", "lone \ud800 surrogate"):
        doc = {"jsonrpc": "2.0", "id": 7, "result": {"content": [{"type": "text", "text": text}], "n": [1, 2.5, None]}}
        body = json_body(doc)
        assert json.loads(body) == doc
    assert body.isascii() and b"\\ud800" in body  # the lone surrogate's reply: the stdlib's escapes


@pytest.mark.sqlite_only
def test_a_held_write_gate_never_stalls_the_servers_other_calls(fed):
    """Phase 4 on SQLite runs calls on the event loop's thread; while another process holds the database's
    write gate for 3 s (a long `prune` batch), an agent's send waits (on a worker thread) and lands once
    when the gate is free, and meanwhile the same server answers pings and reads at once."""
    import fcntl

    from federation import config as fconfig

    t = tokens(fed, "alice", "bob")
    messaging.send_message("bob", "alice", "the database exists")
    with HttpServer(fed, env=fed.subprocess_env(phase=4)) as server:
        async def scenario():
            async with http_agent(server.url, t["alice"], "alice") as alice, \
                    http_agent(server.url, t["bob"], "bob") as bob:
                await alice.ok("heartbeat")
                gate = os.open(str(fconfig.settings().db_path) + ".writelock", os.O_RDWR | os.O_CREAT, 0o644)
                fcntl.flock(gate, fcntl.LOCK_EX)
                held_at = time.monotonic()
                sent: dict = {}

                async def send() -> None:
                    sent["result"] = await alice.ok("send_message", recipient="bob", content="after the gate")
                    sent["at"] = time.monotonic() - held_at

                async def release_later() -> None:
                    await anyio.sleep(3)
                    fcntl.flock(gate, fcntl.LOCK_UN)
                    os.close(gate)

                with anyio.fail_after(60):
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(release_later)
                        tg.start_soon(send)
                        await anyio.sleep(0.3)  # the send is waiting for the gate now
                        for _ in range(5):
                            started = time.monotonic()
                            await bob.session.send_ping()
                            assert (await bob.ok("get_context", agent="alice"))["context"] is not None
                            assert time.monotonic() - started < 1.0, "the server stalled behind the gate"
                        assert "result" not in sent
                assert sent["at"] >= 2.9
                got = await bob.ok("check_inbox")
                assert [m["content"] for m in got["messages"]] == ["after the gate"]

        anyio.run(scenario)


# -- several worker processes behind one port ---------------------------------------------------------

def _fleet_entries(fed, port: str) -> list[dict]:
    entries = []
    for path in (fed.root / "control" / "fleet").glob("*.json"):
        try:
            entry = json.loads(path.read_text())
        except (OSError, ValueError):  # being replaced right now
            continue
        if entry.get("agent") == f"http@127.0.0.1:{port}":
            entries.append({**entry, "file": path.name})
    return entries


def _keep_alive(url: str, token: str) -> tuple[Any, str, dict[str, str]]:
    import http.client

    host, port = url.split("/")[2].rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json",
               "Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2025-06-18"}
    return conn, "/" + url.split("/", 3)[3], headers


def _status(conn: Any, path: str, headers: dict[str, str]) -> int:
    conn.request("POST", path, json.dumps({"jsonrpc": "2.0", "id": 1, "method": "ping"}), headers)
    response = conn.getresponse()
    response.read()
    return response.status


@pytest.mark.sqlite_only
def test_workers_share_one_port_tokens_flag_fleet_and_counts_and_all_refuse_a_revoked_token(fed):
    """`serve --http --workers 3`: three worker processes behind one port, each in the fleet (the supervisor
    is not), all following `rollout set 2`; six agents' messages cross workers and arrive once each; the
    compared calls are counted by the workers that served them; a token revoked while they run is refused by
    every worker within the documented time (agent_tokens.CHECK_EVERY_S, about a second) on connections
    opened before the revocation; SIGTERM stops them all (exit 0) and withdraws every announcement."""
    names = [f"agent-{i}" for i in range(6)]
    t = tokens(fed, *names, "alice")
    context.set_context("probe", "on both sides")
    env = {k: v for k, v in fed.subprocess_env().items()
           if k not in ("FEDERATION_USE_DB", "FEDERATION_PHASE", "FEDERATION_SHADOW_SAMPLE")}
    env.update(FAST)
    log_file = fed.root.parent / "workers.log"
    server = HttpServer(fed, "--workers", "3", env=env, log_file=log_file)
    port = server.url.rsplit(":", 1)[1].split("/")[0]
    try:
        assert "(3 worker processes)" in server.stderr()
        entries = _wait_for(lambda: len(e := _fleet_entries(fed, port)) == 3 and e, 20, what="3 workers announced")
        assert len({e["file"] for e in entries}) == 3
        assert not any(e["file"].endswith(f"-{server.proc.pid}.json") for e in entries)  # not the supervisor
        assert {e["phase"] for e in entries} == {3}
        assert cli(fed, "rollout", "set", "2", env=env).returncode == 0
        _wait_for(lambda: {e["phase"] for e in _fleet_entries(fed, port)} == {2}, 15, what="every worker in phase 2")

        async def agents():
            async def one(i: int) -> None:
                me, nxt = names[i], names[(i + 1) % len(names)]
                async with http_agent(server.url, t[me], me) as agent:
                    for k in range(3):
                        await agent.ok("send_message", recipient=nxt, content=f"{me} #{k}")
                    for _ in range(4):
                        assert (await agent.ok("get_context", agent="probe"))["context"]["text"] == "on both sides"

            with anyio.fail_after(120):
                async with anyio.create_task_group() as tg:
                    for i in range(len(names)):
                        tg.start_soon(one, i)
            for i, me in enumerate(names):
                async with http_agent(server.url, t[me], me) as agent:
                    got = (await agent.ok("check_inbox"))["messages"]
                prev = names[i - 1]
                assert sorted(m["content"] for m in got) == [f"{prev} #{k}" for k in range(3)], me
                assert {m["sender"] for m in got} == {prev}

        anyio.run(agents)

        # 30 connections opened before the revocation: SO_REUSEPORT spreads them over the 3 workers
        conns = [_keep_alive(server.url, t["alice"]) for _ in range(30)]
        assert all(_status(*c) == 200 for c in conns)
        revoked = cli(fed, "agents", "revoke", "alice", env=env)
        assert revoked.returncode == 0, revoked.stderr
        revoked_at = time.monotonic()
        took = []
        for conn in conns:
            while _status(*conn) != 401:
                assert time.monotonic() - revoked_at < 10, "a worker still accepts the revoked token"
                time.sleep(0.05)
            took.append(time.monotonic() - revoked_at)
        assert max(took) < agent_tokens.CHECK_EVERY_S + 2.0, took
        assert all(_status(*conn) == 401 for conn in conns)  # and it stays refused
        for conn, _path, headers in conns:
            conn.close()
        refusals = [json.loads(ln) for ln in log_file.read_text().splitlines() if '"http_unauthorized"' in ln]
        assert {e.get("worker") for e in refusals} == {1, 2, 3}, "every worker refused it"
        pids = {e["file"] for e in _fleet_entries(fed, port)}
        stopped_in = server.stop(signal.SIGTERM)
    finally:
        server.stop(signal.SIGKILL)
    assert server.proc.returncode == 0, server.stderr()[-3000:]
    assert stopped_in < 15
    assert _fleet_entries(fed, port) == []  # every worker withdrew its announcement
    counted: dict[str, int] = {}
    for path in (fed.root / "control" / "counts").glob(f"*/{socket.gethostname()}-*.json"):
        pid = path.name.split("-")[-2] if path.name.count("-") >= 2 else path.name
        cells = json.loads(path.read_text())["cells"]
        counted[pid] = counted.get(pid, 0) + sum(c["comparisons"] for c in cells if c["entity"] == "context")
    assert sum(counted.values()) >= 6 * 4, counted  # every compared get_context counted, by whichever worker
    assert len(pids) == 3
    events = [json.loads(ln) for ln in log_file.read_text().splitlines() if ln.startswith("{")]
    assert sum(e["event"] == "mcp_http_worker_stopped" for e in events) == 3
    assert any(e["event"] == "mcp_http_stopped" and e.get("signal") == "SIGTERM" for e in events)


# -- tokens never leak --------------------------------------------------------------------------------

def test_no_token_in_the_log_file_the_token_file_or_any_tool_result(fed):
    """Tokens go in once (printed by `agents add`) and never come out: not in the log file (with refused,
    revoked and malformed requests and failing tools logged), not in stderr, not in a tool result or tool
    error, not in control/agents.json (which is mode 0600) nor in `agents list --json`."""
    log_file = fed.root.parent / "http.log"
    added = {}
    for name in ("alice", "bob"):
        out = cli(fed, "agents", "add", name, "--json")
        assert out.returncode == 0, out.stderr
        doc = json.loads(out.stdout)
        assert set(doc) == {"agent", "token"} and doc["agent"] == name and len(doc["token"]) >= 40
        assert doc["token"] not in out.stderr
        added[name] = doc["token"]
    results: list[str] = []
    with HttpServer(fed, log_file=log_file) as server:
        async def scenario():
            async with http_agent(server.url, added["alice"], "alice") as alice:
                for tool, args in (("send_message", {"recipient": "bob", "content": "hello"}),
                                   ("pulse", {}), ("list_agents", {}), ("get_history", {})):
                    results.append(json.dumps((await alice.session.call_tool(tool, args)).model_dump()))
                for tool, args in (("send_message", {"recipient": "../x", "content": "x"}),
                                   ("send_message", {"recipient": "bob", "content": "x", "token": added["alice"]}),
                                   ("get_poll", {"poll_id": "nope"})):
                    result = await alice.session.call_tool(tool, args)
                    assert result.is_error
                    results.append(result.content[0].text)

        anyio.run(scenario)
        for bad in (added["alice"] + "x", added["alice"][:-1], "Basic " + added["bob"]):
            assert post(server.url, Authorization=bad if bad.startswith("Basic") else f"Bearer {bad}")[0] == 401
        assert cli(fed, "agents", "revoke", "bob").returncode == 0
        _wait_for(lambda: post(server.url, Authorization=f"Bearer {added['bob']}")[0] == 401, 5, what="revoked")
    listed = cli(fed, "agents", "list", "--json")
    token_file = agent_tokens.tokens_path(fed.root)
    assert token_file.stat().st_mode & 0o777 == 0o600
    everything = {"log file": log_file.read_text(), "stderr": server.stderr(), "token file": token_file.read_text(),
                  "agents list": listed.stdout + listed.stderr}
    assert "http_unauthorized" in everything["log file"] and "tool_refused" in everything["log file"]
    everything.update({f"tool result {i}": text for i, text in enumerate(results)})
    for where, text in everything.items():
        for name, token in added.items():
            assert token not in text, f"{name}'s token found in the {where}"
            assert token[:16] not in text, f"a part of {name}'s token found in the {where}"
    assert json.loads(listed.stdout)["agents"][1]["state"] == "revoked"


# -- the token file as untrusted input ----------------------------------------------------------------

@pytest.mark.sqlite_only
@pytest.mark.parametrize("content", [b"{not json", b"[]", b'{"version": 1, "agents": {"../x": {}}}',
                                     b'{"version": 1, "agents": {"a": {"sha256": "zz"}}}',
                                     b"[" * 100000 + b"]" * 100000, b"x" * (agent_tokens.MAX_FILE_BYTES + 1)])
def test_a_malformed_token_file_authenticates_nobody_and_says_why(fed, content):
    """A token file that cannot be trusted: no token is accepted (fail closed: a revocation is never lost),
    `agents list/add/revoke` exit 1 naming the file, and nothing is overwritten."""
    path = agent_tokens.tokens_path(fed.root)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    registry = agent_tokens.TokenRegistry(path)
    assert registry.agent_for("anything") is None and registry.problem
    for args in (("agents", "list"), ("agents", "add", "alice"), ("agents", "revoke", "alice")):
        out = cli(fed, *args)
        assert out.returncode == 1, (args, out.stdout, out.stderr)
        assert str(path) in out.stderr and "Traceback" not in out.stderr
    assert path.read_bytes() == content


@pytest.mark.sqlite_only
def test_token_file_symlink_fifo_and_shared_token_are_refused(fed, tmp_path):
    path = agent_tokens.tokens_path(fed.root)
    token, _ = agent_tokens.add("alice", fed.root)
    doc = json.loads(path.read_text())
    real = tmp_path / "elsewhere.json"
    real.write_text(json.dumps(doc))
    path.unlink()
    path.symlink_to(real)
    assert agent_tokens.TokenRegistry(path).agent_for(token) is None
    path.unlink()
    os.mkfifo(path)
    registry = agent_tokens.TokenRegistry(path)
    checked = threading.Thread(target=registry.agent_for, args=(token,), daemon=True)
    checked.start()
    checked.join(10)  # a FIFO is never opened in a way that blocks
    assert not checked.is_alive() and "regular file" in registry.problem
    path.unlink()
    doc["agents"]["mallory"] = dict(doc["agents"]["alice"])  # one token for two agents: which would it be?
    path.write_text(json.dumps(doc))
    registry = agent_tokens.TokenRegistry(path)
    assert registry.agent_for(token) is None and "share one token" in registry.problem


@pytest.mark.sqlite_only
def test_agents_cli_usage(fed, tmp_path):
    """Names are checked (exit 2); revoking an unknown agent is exit 1; list shows state, never a hash;
    serve needs exactly one of --agent and --http; a root that does not exist is exit 2, nothing created."""
    assert cli(fed, "agents", "add", "../etc").returncode == 2
    out = cli(fed, "agents", "revoke", "nobody")
    assert out.returncode == 1 and "no token" in out.stderr
    token = cli(fed, "agents", "add", "alice").stdout.strip()
    assert len(token) >= 40 and "\n" not in token
    assert cli(fed, "agents", "revoke", "alice").returncode == 0
    again = cli(fed, "agents", "revoke", "alice")
    assert again.returncode == 0 and "already revoked" in again.stdout
    text = cli(fed, "agents", "list").stdout
    assert "alice" in text and "revoked" in text
    assert json.loads(path_text := agent_tokens.tokens_path(fed.root).read_text())["agents"]["alice"]["sha256"] \
        not in cli(fed, "agents", "list", "--json").stdout + text
    assert path_text
    for args in ((), ("--agent", "a", "--http"), ("--agent", "a", "--port", "1")):
        assert cli(fed, "serve", *args).returncode == 2, args
    missing = tmp_path / "no-such-root"
    assert cli(fed, "agents", "add", "x", "--root", str(missing)).returncode == 2
    assert not missing.exists()
