"""A database call over a network that drops packets silently is bounded (issue 29).

The agent runs in its own network namespace, joined to this one by a veth pair;
it reaches the test's PostgreSQL through a small TCP relay on the pair's host
side.  Taking the host side's link down cuts the agent off without a word: no
reset, no "unreachable", its packets simply vanish.  A send started then must
fail with a ``StorageError`` within the documented 30 s (not hang until the
kernel gives up, ~15 min), and the same process must work again once the link
is back.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import socket
import subprocess
import sys
import threading
import urllib.parse

import pytest

from federation.stores.database import BUSY_DEADLINE_S

AGENT = r"""
import json, sys, time
from federation import messaging
from federation.errors import FederationError
messaging.send_message("alice", "bob", "before the cut")
print("ready", flush=True)
for line in sys.stdin:
    t0 = time.monotonic()
    try:
        messaging.send_message("alice", "bob", line.strip())
        out = {"ok": True}
    except FederationError as exc:
        out = {"ok": False, "type": type(exc).__name__, "error": str(exc)}
    except Exception as exc:  # an untyped error is itself a failure of the test
        out = {"ok": False, "type": "UNTYPED " + type(exc).__name__, "error": str(exc)}
    out["seconds"] = time.monotonic() - t0
    print(json.dumps(out), flush=True)
"""


def _ip(*args: str, ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    cmd = (["ip", "netns", "exec", ns, "ip"] if ns else ["ip"]) + list(args)
    return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=30)


class _Relay:
    """Accepts on (host, 0) and pipes each connection to *target*: the agent's way to the server."""

    def __init__(self, host: str, target: tuple[str, int]):
        self.target = target
        self.sock = socket.create_server((host, 0))
        self.port = self.sock.getsockname()[1]
        self.socks: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            server = socket.create_connection(self.target)
            self.socks += [client, server]
            threading.Thread(target=self._pipe, args=(client, server), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        peers = {a: b, b: a}
        try:
            while True:
                poller = select.poll()  # not select(): the test process may hold descriptors past 1024
                for s in (a, b):
                    poller.register(s, select.POLLIN | select.POLLHUP | select.POLLERR)
                ready = [a if fd == a.fileno() else b for fd, _ in poller.poll(1000)]
                for s in ready:
                    data = s.recv(65536)
                    if not data:
                        return
                    peers[s].sendall(data)
        except OSError:
            return
        finally:
            for s in (a, b):
                s.close()

    def close(self) -> None:
        self.sock.close()
        for s in self.socks:
            try:
                s.close()
            except OSError:
                pass


@pytest.fixture
def netns():
    """(namespace, host-side link, host-side address) of a fresh namespace joined by a veth pair."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("network namespaces need root and iproute2's `ip`")
    n = os.getpid() % 50000
    ns, host, peer = f"fedns{n}", f"fh{n}", f"fp{n}"
    net = f"10.{200 + n % 50}.{n % 250}"
    made = _ip("netns", "add", ns, check=False)
    if made.returncode != 0:
        pytest.skip(f"cannot make a network namespace here: {made.stderr.strip()}")
    try:
        _ip("link", "add", host, "type", "veth", "peer", "name", peer)
        _ip("link", "set", peer, "netns", ns)
        _ip("addr", "add", f"{net}.1/24", "dev", host)
        _ip("link", "set", host, "up")
        _ip("addr", "add", f"{net}.2/24", "dev", peer, ns=ns)
        _ip("link", "set", peer, "up", ns=ns)
        _ip("link", "set", "lo", "up", ns=ns)
        yield ns, host, f"{net}.1"
    finally:
        _ip("link", "del", host, check=False)
        _ip("netns", "del", ns, check=False)


def test_a_send_over_a_silently_dropped_network_fails_within_the_deadline_and_recovers(netns, fed, tmp_path):
    if fed.engine != "postgresql":
        pytest.skip("the SQLite database is a local file: no network to drop")
    ns, host_link, host_addr = netns
    fed.phase(4)
    url = urllib.parse.urlsplit(fed.db_url)
    relay = _Relay(host_addr, (url.hostname, url.port))
    env = fed.subprocess_env(phase=4)
    env["FEDERATION_DB_URL"] = url._replace(netloc=f"{url.username}@{host_addr}:{relay.port}").geturl()
    proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", AGENT], env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()[-3000:]
        _ip("link", "set", host_link, "down")  # from now on the agent's packets vanish
        proc.stdin.write("during the cut\n")
        proc.stdin.flush()
        during = json.loads(proc.stdout.readline())
        _ip("link", "set", host_link, "up")
        proc.stdin.write("after the cut\n")
        proc.stdin.flush()
        after = json.loads(proc.stdout.readline())
    finally:
        proc.kill()
        proc.wait(timeout=30)
        relay.close()

    assert during["ok"] is False and during["type"] == "StorageError", during
    assert "unreachable" in during["error"] or "may or may not" in during["error"], during
    assert during["seconds"] <= BUSY_DEADLINE_S + 5, during  # bounded as documented, not ~15 min
    assert after["ok"] is True, after  # the same process works again once the link is back
    contents = [r[0] for r in fed.store().db.fetchall("SELECT content FROM messages ORDER BY timestamp")]
    assert contents[0] == "before the cut" and contents[-1] == "after the cut"
    assert contents.count("during the cut") <= 1
