"""The MCP tools, one group a concern (one tool is one method of its group; a new tool is one method):
messaging, an agent's public state (context, expertise, profile), governance (polls, sessions), tasks.

``federation.apps.mcp_server.AgentTools`` is every group acting as one agent; the server turns each
marked method into one MCP tool.
"""

from __future__ import annotations

from ._params import _CONTENT_LIMIT as CONTENT_LIMIT
from ._params import MCP_PAGE
from .context import ContextTools
from .governance import GovernanceTools
from .messages import MessagingTools
from .tasks import TaskTools

__all__ = ["CONTENT_LIMIT", "GROUPS", "MCP_PAGE", "ContextTools", "GovernanceTools", "MessagingTools", "TaskTools"]

#: The groups, in CONTRACT order (the order of the tools a client lists).
GROUPS: tuple[type, ...] = (MessagingTools, ContextTools, GovernanceTools, TaskTools)
