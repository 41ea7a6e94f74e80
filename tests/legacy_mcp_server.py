"""A legacy-style federation MCP server, as deployments run it today (tests only).

It imports ``federation.core`` — importing the package installs the
transition shim on it, the drop-in patch — and sets up no logging of its
own: no ``structlog.configure``, no ``federation._logging``.  Its stdout is
the JSON-RPC stream; anything else printed there breaks the client.
"""

from __future__ import annotations

import uuid
from typing import Any
from datetime import datetime, timezone

from mcp.server.mcpserver import MCPServer

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


if __name__ == "__main__":
    server.run("stdio")
