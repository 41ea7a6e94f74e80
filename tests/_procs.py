"""Helpers for tests that start several real processes at once."""

from __future__ import annotations

import time

#: Prepended to a child's code: wait until the file named by argv[1] exists, so all start together.
WAIT_FOR_GO = """
import os, sys, time
go = sys.argv[1]
while not os.path.exists(go):
    time.sleep(0.001)
"""


def drain_script(call: str) -> str:
    """A child's code that, once started together (WAIT_FOR_GO), calls *call* (an expression giving a
    list of messages) until the file named by argv[2] exists and a call returns none, then prints the
    ids it received as one JSON list."""
    return WAIT_FOR_GO + f"""
import json
from federation import messaging
done = sys.argv[2]
got = []
while True:
    finished = os.path.exists(done)
    batch = {call}
    got += [m["id"] for m in batch]
    if finished and not batch:
        break
print(json.dumps(got))
"""


def finish(procs, timeout: float = 300) -> list[str]:
    """Wait for every process; fail with its stderr tail if one exited non-zero; their stdouts."""
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=timeout)
        assert p.returncode == 0, err[-3000:]
        outs.append(out)
    return outs


def wait_for(predicate, timeout: float = 15.0, interval: float = 0.05, what: str = "condition"):
    """The first true value of *predicate*, looked at every *interval* s; AssertionError after *timeout*."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def remove_tree(path) -> None:
    """Remove *path* (a folder under a root this process served) until it is gone: the root's control-plane
    thread may write a file in its ``control/`` meanwhile, which makes one ``rmtree`` fail (CI saw "Directory
    not empty" and FileNotFoundError)."""
    import shutil
    from pathlib import Path

    for _ in range(50):
        if not Path(path).is_dir():
            return
        shutil.rmtree(path, ignore_errors=True)
    assert not Path(path).is_dir(), f"{path} could not be removed"
