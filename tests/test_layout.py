"""The legacy on-disk layout has one home, :mod:`federation.domain.layout`: every path of the tree is built
there and read back there, and no other module of the package spells a folder or file name of it."""

from __future__ import annotations

import ast
import os
import re
from pathlib import Path

import pytest

import federation
from federation.domain import layout
from federation.domain.generate import generate
from federation.errors import ValidationError

PACKAGE = Path(federation.__file__).parent
HOME = PACKAGE / "domain" / "layout.py"

#: names that mean nothing but a place of the layout: spelled anywhere else, a path is being built by hand
ONLY_PATHS = frozenset({layout.NODES_DIR, layout.SHARED_DIR, layout.LEASED_DIR, layout.DEAD_DIR, layout.SENT_KEYS_DIR,
                        layout.LEASES_FILE, layout.POLLS_FILE, layout.LOCK_DIR, *layout.NODE_FILES})
#: names that are also an entity's (the ``sessions`` table, the ``inbox`` of a claim, its lock's prefix):
#: only their use as a path component is refused
ALSO_ENTITIES = frozenset({layout.INBOX_DIR, layout.SESSIONS_DIR})
_SEPARATORS = re.compile(r"[/\\]")


def _docstrings(tree: ast.AST) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                out.add(id(first.value))
    return out


def _path_operands(tree: ast.AST) -> set[int]:
    """The expressions used as a path component: an operand of ``/``, an argument of os.path.join or Path()."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            out |= {id(node.left), id(node.right)}
        elif isinstance(node, ast.Call):
            name = ast.unparse(node.func)
            if name in ("os.path.join", "Path", "pathlib.Path", "PurePath"):
                out |= {id(a) for a in node.args}
    return out


def spelled_paths(source: str) -> list[str]:
    """``line: what`` for each legacy name spelled in *source* as a path (docstrings and comments aside)."""
    tree = ast.parse(source)
    skip, operands = _docstrings(tree), _path_operands(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            parts = _SEPARATORS.split(node.value)
            names = set(parts) & ONLY_PATHS
            if len(parts) > 1 or id(node) in operands:  # a path, or one component of one
                names |= set(parts) & ALSO_ENTITIES
            if names:
                found.append(f"{node.lineno}: {node.value!r} ({', '.join(sorted(names))})")
        elif isinstance(node, ast.Slice) and node.lower is None and node.step is None and \
                ast.unparse(node.upper or ast.Constant(None)) == "-5":
            found.append(f"{node.lineno}: [:-5] (a document's id from its file name: layout.stem)")
    return found


def test_no_module_spells_the_layout():
    """No module of the package but domain/layout.py spells a folder or file name of the legacy layout
    (or cuts ``.json`` off a name by hand): a path of the tree is built by :class:`layout.Tree`."""
    offenders = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if path != HOME:
            found = spelled_paths(path.read_text(encoding="utf-8"))
            if found:
                offenders[str(path.relative_to(PACKAGE))] = found
    assert offenders == {}


@pytest.mark.parametrize("source", [
    'root / "nodes" / agent',
    'os.path.join(root, "shared", name)',
    'path = f"{root}/nodes/{agent}/inbox/{mid}.json"',
    'node / "inbox"',
    'Path(node, "sessions")',
    'REL = "nodes/agent-000/inbox/x.json"',
    'name = "context_window.json"',
    'mid = name[:-5]',
])
def test_the_check_finds_a_hand_built_path(source):
    """The check above would fail on each way of spelling a path by hand."""
    assert spelled_paths(source)


@pytest.mark.parametrize("source", [
    '"""A docstring about nodes/{agent}/inbox/{id}.json."""',
    'entity = "sessions"',
    'lock = {"message": "inbox"}',
    'text = "the shared state: inbox messages"',
    'x = name[:-4]',
])
def test_the_check_leaves_other_uses_alone(source):
    """A docstring, an entity named like a folder, or prose is not a path."""
    assert spelled_paths(source) == []


def test_every_file_of_a_tree_maps_back_to_its_document(tmp_path):
    """Each file of a generated legacy tree is classified by :func:`layout.classify`, and
    :func:`layout.document_file` builds the same path from what it gave: the two directions agree."""
    generate(tmp_path, agents=8, messages=40, polls=3, sessions=3)
    tree = layout.Tree(tmp_path)
    kinds = set()
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) > 40
    for path in files:
        parts = list(path.relative_to(tmp_path).parts)
        found = layout.classify(parts)
        assert found is not None, path
        kind, owner, stem = found
        kinds.add(kind)
        doc_id = owner if kind in layout.NODE_FILE_OF else stem
        assert layout.document_file(tree, kind, doc_id, owner) == path
    assert kinds == {"message", "context", "expertise", "profile", "polls", "session", "task"}


@pytest.mark.parametrize("parts", [
    ["nodes", "a", "inbox", "x.txt"],
    ["nodes", "a", "notes.json"],
    ["nodes", "a", "inbox", "deeper", "x.json"],
    ["nodes", "a", "sent_keys", "0f.json"],
    ["shared", "other.json"],
    ["shared", "sessions", "s.txt"],
    ["control", "flag.json"],
])
def test_a_file_the_layout_does_not_define_maps_to_nothing(parts):
    """Outside the layout (another name, another depth, bookkeeping) no document is found."""
    assert layout.classify(parts) is None


def test_message_folders_map_back():
    """A message in leased/ or dead/ is the same document as in inbox/; its owner and folder are read back."""
    for folder in layout.MESSAGE_DIRS:
        assert layout.classify(["nodes", "ann", folder, "m-1.json"]) == ("message", "ann", "m-1")
    path = os.path.join("r", "nodes", "ann", "leased", "m-1.json")
    assert layout.message_owner(path) == "ann"
    assert layout.message_folder(path) == "leased"
    assert layout.leases_journal(path) == Path("r", "nodes", "ann", "leased", ".leases.json")
    tree = layout.Tree(Path("r"))
    assert layout.received_copy(path, tree.message_file("ann", "m-1"))
    assert not layout.received_copy(os.path.join("r", "nodes", "bob", "leased", "m-1.json"),
                                    tree.message_file("ann", "m-1"))


@pytest.mark.parametrize("call", [
    lambda t: t.node("../etc"),
    lambda t: t.inbox("a/b"),
    lambda t: t.message_file("ann", "../../x"),
    lambda t: t.session_file(".hidden"),
    lambda t: t.key_file("..", "k"),
    lambda t: t.node_file("profile", ""),
])
def test_a_name_becomes_a_path_only_when_valid(call, tmp_path):
    """An agent name or id that could leave its folder is refused before any path is built."""
    with pytest.raises(ValidationError):
        call(layout.Tree(tmp_path))


def test_the_key_file_hides_the_key(tmp_path):
    """An idempotency key never becomes a path of its own: its file is named by its SHA-256."""
    path = layout.Tree(tmp_path).key_file("ann", "../../../etc/passwd")
    assert path.parent == tmp_path / "nodes" / "ann" / "sent_keys"
    assert re.fullmatch(r"[0-9a-f]{64}\.json", path.name)
