"""The library never writes to stdout: events follow the application's structlog set-up, or go to stdlib logging."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import anyio
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client

REPO = Path(__file__).resolve().parent.parent

# A dual-phase read that differs from its shadow: a message file changed behind the database's back.
_MISMATCH = """
import json, pathlib
from federation import core, messaging
mid = messaging.send_message("alice", "bob", "original")
path = core.tree().message_file("bob", mid)
doc = json.loads(path.read_text()); doc["content"] = "changed on disk"; path.write_text(json.dumps(doc))
assert [m["content"] for m in core.load_inbox("bob")] == ["original"]   # phase 3 serves the database
"""


def test_unconfigured_host_gets_nothing_on_stdout_and_warnings_on_stderr(fed):
    """No structlog or logging set-up: stdout stays empty; shadow_mismatch reaches stderr, schema_migrated does not."""
    proc = fed.run_py(_MISMATCH, phase=3)
    assert proc.stdout == ""
    events = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    names = [e["event"] for e in events]
    assert "shadow_mismatch" in names, proc.stderr
    assert "schema_migrated" not in names  # routine: INFO, below the default level
    mismatch = next(e for e in events if e["event"] == "shadow_mismatch")
    assert (mismatch["entity"], mismatch["level"], mismatch["logger"]) == ("messages", "warning", "shim")


def test_host_with_stdlib_logging_at_info_receives_routine_events_through_it(fed):
    """An application that configures the logging module decides: at INFO it also sees schema_migrated."""
    code = ("import logging, sys\nlogging.basicConfig(level=logging.INFO, stream=sys.stderr, "
            "format='%(name)s|%(levelname)s|%(message)s')\n" + _MISMATCH)
    proc = fed.run_py(code, phase=3)
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert any(line.startswith("federation.database|INFO|") and "schema_migrated" in line for line in lines) \
        or fed.engine == "postgresql" and any("schema_migrated" in line for line in lines), proc.stderr
    assert any(line.startswith("shim|WARNING|") and "shadow_mismatch" in line for line in lines), proc.stderr


def test_host_that_configures_structlog_gets_the_events_its_way(fed, tmp_path):
    """structlog configured by the application: every event, INFO included, goes through its processors."""
    out = tmp_path / "events.jsonl"
    code = ("import structlog\n"
            f"fh = open({str(out)!r}, 'w', buffering=1)\n"
            "structlog.configure(processors=[structlog.processors.add_log_level, "
            "structlog.processors.JSONRenderer()], logger_factory=structlog.PrintLoggerFactory(file=fh))\n"
            + _MISMATCH)
    proc = fed.run_py(code, phase=3)
    assert proc.stdout == "" and proc.stderr == ""
    names = [json.loads(line)["event"] for line in out.read_text().splitlines()]
    assert "schema_migrated" in names and "shadow_mismatch" in names


def test_legacy_stdio_server_keeps_its_json_rpc_stream_while_the_shim_logs_mismatches(fed):
    """A legacy-style MCP server (no logging set-up) survives shadow mismatches: the client keeps working.

    Before the fix, structlog's default printed each event on stdout, inside the
    JSON-RPC stream, and the client lost the connection at the first mismatch.
    """
    stderr = fed.root.parent / "legacy-server.stderr"
    stdout_copy = fed.root.parent / "legacy-server.stdout"
    # tee keeps a copy of everything the server writes on stdout, to check it is protocol only
    # (the SDK's client skips a line it cannot parse, other clients drop the connection).
    server = f"{shlex.quote(sys.executable)} {shlex.quote(str(REPO / 'tests' / 'legacy_mcp_server.py'))}"
    params = StdioServerParameters(command="/bin/sh", args=["-c", f"{server} | tee {shlex.quote(str(stdout_copy))}"],
                                   env=fed.subprocess_env(3), cwd=str(REPO))

    async def scenario() -> None:
        with stderr.open("w") as errlog:
            async with stdio_client(params, errlog=errlog) as (read, write):
                async with ClientSession(read, write) as session:
                    await session.initialize()
                    ids = []
                    for n in range(3):
                        sent = await session.call_tool("send", {"sender": "alice", "recipient": "bob",
                                                                "content": f"message {n}"})
                        assert not sent.is_error, sent.content
                        ids.append(sent.structured_content["id"])
                    from federation import core

                    for mid in ids:  # every file now differs from its row: one mismatch per message
                        path = core.tree().message_file("bob", mid)
                        doc = json.loads(path.read_text())
                        doc["content"] = "edited on disk"
                        path.write_text(json.dumps(doc))
                    for _ in range(3):  # each read logs mismatches; the stream must survive all of them
                        result = await session.call_tool("inbox", {"agent": "bob"})
                        assert not result.is_error, result.content
                        assert [m["content"] for m in result.structured_content["messages"]] == [
                            "message 0", "message 1", "message 2"]
                    after = await session.call_tool("send", {"sender": "bob", "recipient": "alice", "content": "ok"})
                    assert not after.is_error

    anyio.run(scenario)
    logged = stderr.read_text()
    assert logged.count("shadow_mismatch") >= 9, logged[-3000:]
    lines = stdout_copy.read_text().splitlines()
    assert len(lines) >= 8  # initialize, 4 sends, 3 reads: every answer went through the copy
    for line in lines:
        assert json.loads(line)["jsonrpc"] == "2.0", f"not protocol on stdout: {line[:200]}"


def test_no_library_module_logs_through_structlog_defaults():
    """Every module of federation/ and shim/ logs through a library logger (structlog's default is stdout).

    Only the applications' set-up (federation/_logging.py) and the helper itself may touch structlog directly.
    """
    allowed = {REPO / "federation" / "_logging.py", REPO / "shim" / "_log.py"}
    offenders = []
    for package in ("federation", "shim"):
        for path in (REPO / package).rglob("*.py"):
            if path in allowed:
                continue
            text = path.read_text(encoding="utf-8")
            if "structlog.get_logger(" in text or "structlog.wrap_logger(" in text or "print(" in text:
                offenders.append(str(path.relative_to(REPO)))
    assert offenders == []
