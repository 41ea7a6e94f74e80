"""Behaviour every storage engine must share, beyond single operations."""

from __future__ import annotations

import time

from federation import config, governance
from federation.stores import schema
from federation.stores.database import get_db


def test_many_processes_create_the_schema_at_once(fed, tmp_path):
    """8 processes starting together on an empty database: one schema, one creation record, no errors."""
    fed.phase(4)
    go = tmp_path / "go"
    code = """
import os, sys, time
while not os.path.exists(sys.argv[1]):
    time.sleep(0.001)
from federation import context
context.set_context(f"agent-{sys.argv[2]}", "up")
"""
    procs = [fed.spawn(code, str(go), str(i)) for i in range(8)]
    time.sleep(0.5)
    go.touch()
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-3000:]
    store = fed.store()
    rows = get_db(config.settings()).fetchall("SELECT version FROM schema_version ORDER BY version")
    assert [r[0] for r in rows] == [version for version, _ in schema.MIGRATIONS]  # each applied once
    assert get_db(config.settings()).fetchall("SELECT COUNT(*) FROM federation_meta WHERE key = 'created_at'") == [(1,)]
    assert store.load_agents() == [f"agent-{i}" for i in range(8)]
    assert governance.list_polls() == []



def test_concurrent_expertise_replacements_do_not_mix(fed, tmp_path):
    """4 processes replacing one agent's domains over and over: each result is one list, never a blend."""
    from federation import context

    fed.phase(4)
    context.set_expertise("alice", ["z"])
    go = tmp_path / "go"
    code = """
import os, sys, time
while not os.path.exists(sys.argv[1]):
    time.sleep(0.001)
from federation import context
mine = sys.argv[2].split(",")
blends = 0
for _ in range(300):
    context.set_expertise("alice", mine)
    seen = context.get_expertise("alice")
    blends += len(seen) not in (2, 3) or seen not in (["a", "b"], ["c", "d", "e"])
print(blends)
"""
    procs = [fed.spawn(code, str(go), "a,b" if i % 2 else "c,d,e") for i in range(4)]
    time.sleep(0.5)
    go.touch()
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-3000:]
        assert out.strip() == "0", "a reader saw two replacements blended"
    assert context.get_expertise("alice") in (["a", "b"], ["c", "d", "e"])
