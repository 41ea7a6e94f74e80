"""A legacy-style federation MCP server, as deployments run it today (tests only).

It imports ``federation.core`` — importing the package installs the
transition shim on it, the drop-in patch — and sets up no logging of its
own: no ``structlog.configure``, no ``federation._logging``.  Its stdout is
the JSON-RPC stream; anything else printed there breaks the client.
"""

from __future__ import annotations

import io
import sys
import uuid
from typing import Any
from datetime import datetime, timezone

import anyio
from mcp.server.mcpserver import MCPServer
from mcp.server.stdio import stdio_server

from federation import core

server = MCPServer("legacy-federation")


@server.tool(structured_output=True)
def send(sender: str, recipient: str, content: str) -> dict[str, Any]:
    """Deliver a message (the legacy server's send_message)."""
    message = {"id": uuid.uuid4().hex, "sender": sender, "recipient": recipient, "content": content,
               "message_type": "task", "reply_to": None, "timestamp": datetime.now(timezone.utc).isoformat()}
    core.save_message(message)
    return {"id": message["id"]}


@server.tool(structured_output=True)
def inbox(agent: str) -> dict[str, Any]:
    """The agent's unread messages, without claiming them."""
    return {"messages": core.load_inbox(agent)}


async def serve_on_process_stdout() -> None:
    """Serve on the process's own stdout, as MCP SDK 1.x servers did.

    SDK 2.x diverts file descriptor 1 to stderr while it serves, which would
    hide a library that prints; deployed legacy servers have no such guard, so
    this one passes its streams explicitly (the SDK then leaves fd 1 alone).
    """
    stdin = anyio.wrap_file(io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8"))
    stdout = anyio.wrap_file(io.TextIOWrapper(sys.stdout.buffer, encoding="utf-8", write_through=True))
    async with stdio_server(stdin=stdin, stdout=stdout) as (read_stream, write_stream):
        low = server._lowlevel_server
        await low.run(read_stream, write_stream, low.create_initialization_options())


if __name__ == "__main__":
    anyio.run(serve_on_process_stdout)
