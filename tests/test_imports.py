"""The import graph of ``federation`` and ``shim``: no cycles.

Read from the source with :mod:`ast` (nothing is imported): every
``import``/``from … import`` of a package module, at module level or inside a
function, is an edge.  ``from . import name`` points at the submodule
``name`` when there is one, else at the package itself.  A package's
``__init__`` is not implied by importing its submodules (Python runs it
first either way; that is not a cycle anyone can untangle).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("federation", "shim")


def _modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def _resolve(module: str, path: Path, level: int, target: str | None) -> str:
    if not level:
        return target or ""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for _ in range(level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{target}" if target else package


def import_graph() -> dict[str, set[str]]:
    """{module: the package modules it imports}."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(module, path, node.level, node.module)
                names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            else:
                continue
            for name in names:
                while name and name not in modules:  # "a.b.c" imports the package module "a.b"
                    name = name.rpartition(".")[0]
                if name and name != module:
                    edges.add(name)
        graph[module] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of *graph* as a path that ends where it starts, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_graph_is_read_from_the_sources():
    """The walk sees both packages and real edges (so an empty graph cannot pass for an acyclic one)."""
    graph = import_graph()
    assert {"federation", "federation.core", "federation.stores.sqlstore", "shim", "shim._experiment"} <= set(graph)
    assert "federation.core" in graph["federation"]
    assert "shim._compare" in graph["shim._experiment"]
    assert "federation.stores.sqlstore" in graph["federation._wiring"]  # a function-level import counts


def test_find_cycle_finds_one():
    """The checker reports a cycle, including one through a function-level import."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle():
    """No module of federation/ or shim/ imports, directly or not, a module that imports it."""
    graph = import_graph()
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_two_stores_do_not_import_each_other():
    """The file store and the SQL store share rules through federation.domain.entities, never each other's names."""
    graph = import_graph()
    assert "federation.core" not in graph["federation.stores.sqlstore"]
    assert "federation.stores.sqlstore" not in graph["federation.core"]
    assert "federation.domain.entities" in graph["federation.stores.sqlstore"] and "federation.domain.entities" in graph["federation.core"]


def test_the_engines_import_the_dialect_base_not_the_facade():
    """Top-down: each engine module imports the dialect base; only the façade chooses between them."""
    graph = import_graph()
    for engine in ("federation.stores.sqlite", "federation.stores.postgres"):
        assert "federation.stores.dialect" in graph[engine]
        assert "federation.stores.database" not in graph[engine]
    assert "federation.stores.sqlite" in graph["federation.stores.database"]  # the default


def test_a_server_engine_is_one_module_registered_by_its_scheme():
    """PostgreSQL is its module and one entry of the registry: nothing imports it by name, and the store's SQL
    never asks which engine it runs on (every difference is the dialect's)."""
    from federation.stores.dialect import ENGINES

    graph = import_graph()
    assert set(ENGINES.values()) == {"federation.stores.postgres"}
    assert [m for m, edges in graph.items() if "federation.stores.postgres" in edges] == []
    for path in sorted((ROOT / "federation").rglob("*.py")):
        if path.stem not in ("postgres", "sqlite", "dialect"):
            text = path.read_text(encoding="utf-8")
            assert 'dialect.name ==' not in text and 'dialect.name !=' not in text, path


# ---------------------------------------------------------------------------
# the shim's target is reached through its module

#: Where code lives that could import from federation.core (the tests too).
SCANNED = ("federation", "shim", "scripts", "bench", "examples", "tests")
#: The wiring installs the shim on core; it may name core's functions.
WIRING = {"federation._wiring"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def names_imported_from_core(module: str, path: Path, source: str) -> list[str]:
    """``path:line: name`` for each name *source* imports from ``federation.core`` (absolutely or relatively)."""
    found = []
    for node in ast.walk(ast.parse(source, str(path))):
        if isinstance(node, ast.ImportFrom) and _resolve(module, path, node.level, node.module) == "federation.core":
            found += [f"{path.relative_to(ROOT)}:{node.lineno}: {a.name}" for a in node.names]
    return found


def test_nothing_imports_names_from_federation_core():
    """``from federation.core import save_vote`` would bind the unpatched function and bypass the shim:
    every caller goes through the module (``core.save_vote(...)``)."""
    found = []
    for top in SCANNED:
        for path in sorted((ROOT / top).rglob("*.py")) if (ROOT / top).is_dir() else ():
            module = _module_name(path)
            if module not in WIRING:
                found += names_imported_from_core(module, path, path.read_text(encoding="utf-8"))
    assert found == []


def test_a_name_imported_from_core_is_found():
    path = ROOT / "federation" / "governance.py"
    assert names_imported_from_core("federation.governance", path, "from .core import save_vote\n") == [
        "federation/governance.py:1: save_vote"]
    assert names_imported_from_core("bench.x", ROOT / "bench" / "x.py", "from federation.core import tree\n") != []
    assert names_imported_from_core("federation.governance", path, "from . import core\n") == []


# ---------------------------------------------------------------------------
# the shim stays removable

#: The federation modules that may import the shim: the wiring that installs it, the adopter
#: (federation.adopt) and the rollout observer that counts its observations.
MAY_IMPORT_SHIM = {"federation", "federation._wiring", "federation.adopt", "federation.adopt._adoption",
                   "federation.adopt._plan", "federation.adopt._call", "federation.adopt._saves", "federation.rollout._runtime",
                   "federation.rollout._runtimes"}
#: Still importing it, to be moved: none (the report and the shadow reads share the federation's own
#: comparison, federation.domain.compare, which the wiring and the adopter give the shim as its differ).
STILL_IMPORTS_SHIM: set[str] = set()


def test_the_shim_imports_nothing_from_the_federation():
    """The shim is a generic experiment runner: removable after phase 4, usable on any code."""
    graph = import_graph()
    leaks = {m: sorted(e for e in edges if e.split(".")[0] == "federation")
             for m, edges in graph.items() if m.split(".")[0] == "shim"}
    assert {m: e for m, e in leaks.items() if e} == {}


def test_only_the_wiring_imports_the_shim():
    """The federation's own logging, phase and comparison questions are not answered by the shim."""
    graph = import_graph()
    importers = {m for m, edges in graph.items()
                 if m.split(".")[0] == "federation" and any(e.split(".")[0] == "shim" for e in edges)}
    assert importers <= MAY_IMPORT_SHIM | STILL_IMPORTS_SHIM, importers - MAY_IMPORT_SHIM - STILL_IMPORTS_SHIM
    assert "federation" in importers  # the walk sees the one line that installs it


def test_the_package_tree_is_the_architecture():
    """Layers are subpackages; at most 13 modules are left directly in federation/ (the public API -- the
    CONTRACT's `from federation import tasks` is the 13th --, configuration, errors, the CLI, the wiring
    and logging)."""
    top = sorted(p.name for p in (ROOT / "federation").glob("*.py"))
    assert len(top) <= 13, top
    for layer in ("domain", "stores", "transfer", "rollout", "operations", "apps"):
        assert (ROOT / "federation" / layer / "__init__.py").is_file(), layer


#: The layers, bottom up: a module imports from its own layer and the ones below, never above.
LAYERS = ("domain", "stores", "transfer", "rollout", "operations", "apps")
#: Below every layer: errors, configuration, the library's logging.
BASE = {"federation.errors", "federation.config", "federation._logging"}
#: The file store (the legacy module the shim is installed on): above the stores it is built on (the gate,
#: the entities), below everything that reads the files through it; nothing in domain/ or stores/ imports it.
CORE = "federation.core"
#: The public API: above every layer but the applications (the wiring is the shim's, the package installs it).
API = {"federation.messaging", "federation.context", "federation.governance", "federation.tasks",
       "federation._wiring", "federation"}
#: What drives the rest from outside: the adopter, the command line and its entry point (nothing imports them).
EDGES = {"federation.adopt", "federation.cli", "federation.__main__"}
#: Arrows that still point up, to be inverted: none.  The report's log summary (`report --log`), which reads
#: the rollout's counts, is the rollout's (rollout._log_summary); sync and archive are handed the fleet's
#: phase by their caller and apply the domain's rule (domain.authority); doctor reads the dead-letter
#: summary from the stores (stores.dead_letters), handing it the file store's reader; the pulse's watcher
#: (stores.wait) is handed the legacy tree and the database's dialect by the public messaging API.
KNOWN_UP: set[str] = set()


def rank(module: str) -> float | None:
    """Where *module* stands, bottom up (None: not a federation module).  Every module has one: a new top-level
    module must be placed here (an unplaced one fails :func:`test_every_module_has_a_place`)."""
    parts = module.split(".")
    if parts[0] != "federation":
        return None
    if module in BASE:
        return 0
    if len(parts) > 1 and parts[1] in LAYERS:
        here = 1 + LAYERS.index(parts[1])  # domain 1, stores 2, transfer 3, rollout 4, operations 5, apps 6
        return here
    if module == CORE:
        return 2.5  # above the stores, below transfer
    if module in API:
        return 5.5  # above operations, below the applications
    if any(module == edge or module.startswith(edge + ".") for edge in EDGES):
        return 7
    return None


def _layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if parts[0] == "federation" and len(parts) > 1 and parts[1] in LAYERS else None


def upward_arrows(graph: dict[str, set[str]]) -> list[str]:
    """``a -> b`` for each import of a module that stands above the importer."""
    up = []
    for module, edges in sorted(graph.items()):
        here = rank(module)
        if here is None:
            continue
        for edge in sorted(edges):
            there = rank(edge)
            if there is not None and there > here:
                up.append(f"{module} -> {edge}")
    return up


def test_every_module_has_a_place():
    """Each module of federation/ stands on a floor: a layer, the base, the file store, the API or an edge."""
    assert [m for m in import_graph() if m.split(".")[0] == "federation" and rank(m) is None] == []


def test_no_layer_imports_one_above_it():
    """The folder tree is the architecture: no arrow points up (core and the top-level modules included)."""
    up = upward_arrows(import_graph())
    assert set(up) <= KNOWN_UP, sorted(set(up) - KNOWN_UP)


def test_an_upward_arrow_is_found():
    """The check sees an arrow from the stores up to the file store, the API or an application, and from
    the file store up to the API; and none where the arrow points down."""
    graph = {"federation.stores.wait": {"federation.core"}, "federation.stores.dead_letters": {"federation.messaging"},
             "federation.core": {"federation._wiring", "federation.stores.files"},
             "federation.domain.clock": {"federation.config"}, "federation.rollout._io": {"federation.apps.signals"},
             "federation.messaging": {"federation.core", "federation.stores.wait"}}
    assert upward_arrows(graph) == [
        "federation.core -> federation._wiring", "federation.rollout._io -> federation.apps.signals",
        "federation.stores.dead_letters -> federation.messaging", "federation.stores.wait -> federation.core"]


# ---------------------------------------------------------------------------
# packages expose faces

def _package_of(dotted: str, modules: dict[str, Path]) -> str:
    """The package *dotted* (a module, or a name in one) belongs to."""
    while dotted and not (dotted in modules and modules[dotted].name == "__init__.py"):
        dotted = dotted.rpartition(".")[0]
    return dotted


def private_imports(module: str, path: Path, source: str, modules: dict[str, Path]) -> list[str]:
    """``path:line: name`` for each private module or name (``_x``, not ``__x__``) *source* imports from
    another package than its own (a package's private parts are for it and its subpackages)."""
    found = []
    for node in ast.walk(ast.parse(source, str(path))):
        if isinstance(node, ast.ImportFrom):
            base = _resolve(module, path, node.level, node.module)
            targets = [f"{base}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            continue
        for target in targets:
            parts = target.split(".")
            if parts[0] not in PACKAGES:
                continue
            for i, part in enumerate(parts):
                if part.startswith("_") and not (part.startswith("__") and part.endswith("__")):
                    owner = _package_of(".".join(parts[:i]), modules)
                    if not (module == owner or module.startswith(owner + ".")):
                        found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {target}")
                    break
    return found


def test_no_module_imports_a_private_name_of_another_package():
    """A package is used through its face (its ``__init__`` or a public module): the CLI asks
    ``federation.rollout`` for the fleet's phase, not ``rollout._default``."""
    modules = _modules()
    found = []
    for module, path in modules.items():
        found += private_imports(module, path, path.read_text(encoding="utf-8"), modules)
    assert found == []


def test_a_private_import_is_found():
    """Private modules and names across packages are found; within a package (and its subpackages) they are not."""
    modules = _modules()
    top, sqlite = ROOT / "federation" / "governance.py", ROOT / "federation" / "stores" / "sqlite.py"
    assert private_imports("federation.governance", top, "from .rollout._default import fleet_phase\n", modules) == [
        "federation/governance.py:1: federation.rollout._default.fleet_phase"]
    assert private_imports("federation.governance", top, "from .rollout import _counts\n", modules) != []
    assert private_imports("federation.governance", top, "from .domain.entities import _json_type\n", modules) != []
    assert private_imports("federation.governance", top, "import federation.rollout._io\n", modules) != []
    assert private_imports("federation.governance", top, "from .rollout import fleet_phase\nfrom . import _logging\n",
                           modules) == []
    assert private_imports("federation.stores.sqlite", sqlite, "from .wait import _poll\n", modules) == []
    assert private_imports("federation.apps.mcp_http", ROOT / "federation" / "apps" / "mcp_http.py",
                           "from .. import __version__\nfrom .._logging import library_logger\n", modules) == []
