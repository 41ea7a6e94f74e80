"""Helpers for the migration / report / sync / archive tests (real files, real database, real processes)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

from federation.transfer.rows import TABLES, read_tree
from federation.transfer.migrate import insert_values

CLI = "import sys; from federation.cli import main; sys.exit(main())"


def cli(fed, *args: str, phase: int | None = None, timeout: float = 300, env: dict | None = None
        ) -> subprocess.CompletedProcess:
    """Run ``federation ARGS`` in a real process against the test federation."""
    full_env = fed.subprocess_env(phase)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-c", CLI, *args], env=full_env, capture_output=True, text=True,
                          timeout=timeout)


def cli_json(fed, *args: str, **kw) -> tuple[int, dict]:
    proc = cli(fed, *args, "--json", **kw)
    assert proc.stdout.strip(), f"no JSON on stdout (rc={proc.returncode}): {proc.stderr[-2000:]}"
    return proc.returncode, json.loads(proc.stdout)


def snapshot(top: Path) -> dict[str, tuple[str, int]]:
    """Every file under *top*: relative path -> (sha256, mode); not control/ (this test process's own
    announcements and counts, rewritten every few seconds by the rollout control plane)."""
    out = {}
    for here, _dirs, names in os.walk(top):
        if "control" in Path(here).relative_to(top).parts:
            continue
        for name in names:
            path = Path(here) / name
            st = path.lstat()
            out[str(path.relative_to(top))] = (hashlib.sha256(path.read_bytes()).hexdigest(), st.st_mode)
    return out


def dirs_of(top: Path) -> set[str]:
    return {str(Path(here).relative_to(top)) for here, _d, _n in os.walk(top)}


def db_rows(store) -> dict[str, set[tuple]]:
    """Every row of every migrated table, with the insert-only columns, as sets."""

    def fn(tx):
        out = {}
        for t in TABLES:
            cols = ", ".join(t.columns + tuple(name for name, _ in t.extra))
            out[t.name] = {tuple(r) for r in tx.fetchall(f"SELECT {cols} FROM {t.name}")}
        return out

    return store.db.read(fn)


def tree_rows(root: Path) -> dict[str, set[tuple]]:
    """What one migration of the tree under *root* must leave in each table."""
    scanned = read_tree(root)
    return {t.name: set(insert_values(t, list(scanned.rows[t.name].values()), scanned.rows)) for t in TABLES}


def api_view() -> dict:
    """Everything the public API shows of the federation (for phase-to-phase comparisons)."""
    from federation import context, governance, messaging

    agents = context.list_agents()
    return {
        "agents": agents,
        "context": {a: context.get_context(a) for a in agents},
        "expertise": {a: context.get_expertise(a) for a in agents},
        "profiles": {a: context.get_profile(a) for a in agents},
        "inboxes": {a: messaging.peek_inbox(a) for a in agents},
        "polls": governance.list_polls(),
        "sessions": governance.list_sessions(),
    }
