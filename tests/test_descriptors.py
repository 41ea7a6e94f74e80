"""Descriptors bounded by configuration, not by traffic (issue 30): a process holds a lock file open only
while it holds the lock, so many threads serving many agents stay under a small open-file limit."""

from __future__ import annotations

import json

import pytest

MANY = r"""
import json, os, resource, threading
resource.setrlimit(resource.RLIMIT_NOFILE, (192, 192))   # a service manager's low limit, scaled down
from federation import context, messaging
AGENTS = [f"agent-{n:03d}" for n in range(48)]
errors, done = [], []

def work(t):
    try:
        for n, agent in enumerate(AGENTS):
            messaging.send_message(f"sender-{t:02d}", agent, f"{t}:{n}")
            context.set_context(agent, f"thread {t}")
            messaging.check_inbox(agent)
        done.append(t)
    except Exception as exc:  # noqa: BLE001 - reported to the test
        errors.append(f"{type(exc).__name__}: {exc}")

threads = [threading.Thread(target=work, args=(t,)) for t in range(16)]
for th in threads: th.start()
for th in threads: th.join()
def target(fd):
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:  # the listing's own descriptor, closed by now
        return ""
locks = [target(fd) for fd in os.listdir("/proc/self/fd")]
print(json.dumps({"errors": errors[:3], "done": len(done),
                  "lock_fds": sum(1 for p in locks if p.endswith(".lock") and "/.locks/" in p)}))
"""


@pytest.mark.parametrize("phase", [1, 2])
def test_sixteen_threads_forty_eight_agents_under_a_192_descriptor_limit(fed, phase):
    """16 threads each send to, set the context of and read the inbox of 48 agents (1,536 lock files' worth
    of documents) in a process limited to 192 open files: no call fails, and afterwards the process holds no
    lock file open (each thread used to keep every lock file it touched: 16 x 96 descriptors)."""
    out = json.loads(fed.run_py(MANY, phase=phase, timeout=300).stdout.strip().splitlines()[-1])
    assert out["errors"] == [] and out["done"] == 16, out
    assert out["lock_fds"] == 0, out
