"""Configuration is read at the edges only (issue 28, "One way in").

``config.settings()`` (the process's configuration: the environment, the overrides, or the federation
served in this thread) is read by the composition root (``federation._wiring``: the default federation and
the phase the shim asks for) and by the legacy module (``federation.core``, the drop-in, which reads the root
of the federation served).  The CLI builds each invocation's settings from its options
(``config.settings_with``) and hands a ``Federation`` to the servers and the dashboard; every command,
operation, server and store below takes the federation (or its ``Settings``) it serves as a parameter.

Read from the source with :mod:`ast` (nothing is imported), like tests/test_gate.py.
"""

from __future__ import annotations

import ast
from pathlib import Path

from test_imports import _resolve  # one reading of a relative import for both checks

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("federation", "shim")

#: module -> (why it may read the process's configuration, how many calls)
ALLOWED = {
    "federation/_wiring.py": ("the composition root: the default federation, the environment's phase (benchmarks) "
                              "and the control plane's phase for the federation a call serves", 3),
    "federation/core.py": ("the legacy module (the drop-in): the root of the federation served", 1),
}


def _module_of(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def settings_calls(source: str, path: Path) -> list[int]:
    """The line of each call of ``federation.config.settings`` in *source* (through the module, an alias of
    it, or the function imported by name)."""
    module = _module_of(path)
    tree = ast.parse(source, str(path))
    config_names: set[str] = set()  # names bound to the module federation.config
    function_names: set[str] = set()  # names bound to federation.config.settings
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = _resolve(module, path, node.level, node.module)
            for alias in node.names:
                if base == "federation" and alias.name == "config":
                    config_names.add(alias.asname or alias.name)
                elif base == "federation.config" and alias.name == "settings":
                    function_names.add(alias.asname or alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "federation.config" and alias.asname:
                    config_names.add(alias.asname)
    lines = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        fn = node.func
        if isinstance(fn, ast.Name) and fn.id in function_names:
            lines.append(node.lineno)
        elif isinstance(fn, ast.Attribute) and fn.attr == "settings":
            owner = ast.unparse(fn.value)
            if owner in config_names or owner == "federation.config":
                lines.append(node.lineno)
    return sorted(lines)


def _sources() -> list[Path]:
    return [p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))
            if p != ROOT / "federation" / "config.py"]  # where it is defined


def test_the_configuration_is_read_at_the_edges_only():
    """No operation, transfer, rollout step, store, server or dashboard reads ``config.settings()``: each
    takes the federation it serves, handed down from the edge (the CLI, a server's entry point)."""
    found = {str(p.relative_to(ROOT)): lines for p in _sources()
             if (lines := settings_calls(p.read_text(encoding="utf-8"), p))}
    outside = {rel: lines for rel, lines in found.items() if rel not in ALLOWED}
    assert not outside, f"config.settings() read outside the edges (take settings or a Federation instead): {outside}"
    counted = {rel: len(lines) for rel, lines in found.items()}
    assert counted == {rel: n for rel, (_, n) in ALLOWED.items()}, \
        "an edge's reads changed: check each one is an edge's, then count it in ALLOWED"


def test_the_check_sees_each_way_to_call_it():
    """The checker finds the call through the module, an alias, the name imported, and from a package; not
    a method of the same name or ``settings_with`` (a checker that finds nothing proves nothing)."""
    here = ROOT / "federation" / "operations" / "doctor.py"
    code = ("from .. import config\nfrom ..config import settings as s\nimport federation.config as cf\n"
            "from federation import config as c2\n"
            "config.settings()\ns()\ncf.settings()\nc2.settings()\nfederation.config.settings()\n"
            "self.settings()\nconfig.settings_with({})\nfed.settings\n")
    assert settings_calls(code, here) == [5, 6, 7, 8, 9]
    init = ROOT / "federation" / "apps" / "dashboard" / "__init__.py"
    assert settings_calls("from ... import config\nconfig.settings()\n", init) == [2]
    assert settings_calls("from .. import config\nconfig.settings()\n", init) == []  # federation.apps.config
    for rel in ALLOWED:
        assert (ROOT / rel).is_file(), f"{rel} is allowed but does not exist: remove it from ALLOWED"
