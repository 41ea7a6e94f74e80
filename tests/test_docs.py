"""The reference in docs/ cannot drift from the CLI: every command and every option of
``federation`` (walked from the click command tree) appears on some page of docs/.

Modelled on sqlite-utils' ``tests/test_docs.py``.
"""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest

from federation.cli import main

DOCS = Path(__file__).resolve().parent.parent / "docs"


def _docs_text() -> str:
    return "\n".join(p.read_text(encoding="utf-8") for p in sorted(DOCS.glob("*.md")))


def _commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], click.Command]]:
    found = []
    for name, command in sorted(group.commands.items()):
        path = prefix + (name,)
        found.append((path, command))
        if isinstance(command, click.Group):
            found.extend(_commands(command, path))
    return found


COMMANDS = _commands(main)
OPTIONS = sorted({(" ".join(path), opt)
                  for path, command in COMMANDS
                  for param in command.params if isinstance(param, click.Option)
                  for opt in param.opts if opt.startswith("--") and opt != "--help"})


def test_the_tree_is_walked():
    # Guards the walk itself: were it to find nothing, every test below would pass vacuously.
    names = {" ".join(path) for path, _ in COMMANDS}
    assert {"migrate", "report", "sync", "rollout", "rollout set", "rollout status", "serve"} <= names
    assert ("prune", "--older-than") in OPTIONS


@pytest.mark.parametrize("path", [" ".join(p) for p, _ in COMMANDS])
def test_command_is_documented(path: str):
    # The command as it is typed: "federation rollout set" (or "rollout set" in a table).
    assert re.search(rf"federation {re.escape(path)}\b", _docs_text()), \
        f"`federation {path}` appears nowhere in docs/*.md"


@pytest.mark.parametrize("command,option", OPTIONS)
def test_option_is_documented(command: str, option: str):
    assert re.search(rf"{re.escape(option)}(?![\w-])", _docs_text()), \
        f"`{option}` of `federation {command}` appears nowhere in docs/*.md"


def test_the_tools_table_lists_every_tool_the_server_offers():
    """docs/mcp-and-agents.md's tools table names exactly the tools the MCP server offers (issue 29)."""
    from federation.apps.mcp_server import TOOL_NAMES

    text = (DOCS / "mcp-and-agents.md").read_text(encoding="utf-8")
    table = text[text.index("**Tools**"):]
    table = table[:table.index("\n\n", table.index("| group |"))]
    listed = set(re.findall(r"`(\w+)`", table))
    assert listed == set(TOOL_NAMES), (sorted(set(TOOL_NAMES) - listed), sorted(listed - set(TOOL_NAMES)))
