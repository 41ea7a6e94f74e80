"""The composition root (issue 28): a ``Federation`` built once from one ``Settings`` serves its own files
and database; two in one process never see each other's data, also from two threads at once."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from federation import Federation, config, context, default_federation, governance, messaging
from federation.stores.sqlstore import forget_stores


@pytest.fixture(params=("sqlite", "postgresql"))
def two(request: pytest.FixtureRequest, tmp_path: Path):
    """make(phase) -> two federations (two roots, two databases) on one engine, pinned to *phase*."""
    new_pg_database = request.getfixturevalue("pg_databases") if request.param == "postgresql" else None

    def make(phase: int) -> tuple[Federation, Federation]:
        out = []
        for name in ("a", "b"):
            root = tmp_path / f"p{phase}-{name}"
            out.append(Federation(config.settings_with({
                "FEDERATION_ROOT": str(root), "FEDERATION_DB": str(tmp_path / f"p{phase}-{name}.db"),
                "FEDERATION_DB_URL": new_pg_database() if new_pg_database else None,
                **config.phase_env(phase), "FEDERATION_SHADOW_SAMPLE": "1.0"})))
        return out[0], out[1]

    # the configured (default) federation is a third one, of this test's own: a call that escaped its
    # federation lands there (and fails the test), never in the machine's default root
    with config.override(FEDERATION_ROOT=str(tmp_path / "default"), FEDERATION_DB=str(tmp_path / "default.db"),
                         FEDERATION_DB_URL=None, FEDERATION_USE_DB=None, FEDERATION_PHASE=None):
        yield make
    forget_stores()


@pytest.mark.parametrize("phase", [1, 2, 3, 4])
def test_two_federations_in_one_process_do_not_see_each_other(two, phase):
    """Each federation's calls reach only its own root and database, whichever side the phase serves."""
    a, b = two(phase)
    configured = config.settings()
    with a.serve():
        messaging.send_message("alice", "bob", "from a")
        context.set_context("alice", "a's context")
        poll_a = governance.create_poll("alice", "a?", ["yes", "no"])
    with b.serve():
        messaging.send_message("carol", "bob", "from b")
        assert [m["content"] for m in messaging.peek_inbox("bob")] == ["from b"]
        assert context.get_context("alice") is None
        assert governance.list_polls() == []
    with a.serve():
        assert [m["content"] for m in messaging.peek_inbox("bob")] == ["from a"]
        assert context.get_context("alice")["text"] == "a's context"
        assert [p["id"] for p in governance.list_polls()] == [poll_a]
        assert a.phase() == phase
    assert config.settings() is configured  # nothing left behind: the default federation is the configured one
    assert not (configured.root / "nodes").exists()  # and it received nothing
    if phase >= 2:  # the database of each holds its own rows only
        assert [m["content"] for m in a.store.load_inbox("bob")] == ["from a"]
        assert [m["content"] for m in b.store.load_inbox("bob")] == ["from b"]
    if phase <= 3:  # and so do the files
        assert a.tree.inbox("bob").is_dir() and b.tree.inbox("bob").is_dir()
        assert not (b.tree.root / "shared" / "polls.json").exists() or poll_a not in (
            b.tree.root / "shared" / "polls.json").read_text()


def test_two_federations_served_from_two_threads_at_once(two):
    """Two threads, each serving its own federation, interleave their calls: every message lands in its own."""
    a, b = two(4)
    errors: list[BaseException] = []
    go = threading.Barrier(2)

    def agent(fed: Federation, tag: str) -> None:
        try:
            with fed.serve():
                go.wait()
                for i in range(40):
                    messaging.send_message("alice", "bob", f"{tag}{i}")
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=agent, args=(fed, tag)) for fed, tag in ((a, "a"), (b, "b"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert not (config.settings().root / "nodes").exists()  # nothing escaped to the default federation
    for fed, tag in ((a, "a"), (b, "b")):
        with fed.serve():
            assert sorted(m["content"] for m in messaging.peek_inbox("bob")) == sorted(f"{tag}{i}" for i in range(40))


def test_the_default_federation_is_built_once_from_the_configured_settings(fed):
    """Outside ``serve()``, the public functions serve the configured default federation, built once per settings."""
    first = default_federation()
    assert first is default_federation() and first.settings is config.settings()
    assert first.tree.root == config.settings().root
    with Federation(config.settings()).serve() as other:
        assert other is not first and config.settings() is first.settings


class _HttpServed:
    """The MCP HTTP application of one federation (``mcp_http.create_app(registry, fed)``), served by uvicorn
    in a thread of this process on a free port."""

    def __init__(self, fed: Federation):
        import socket

        import uvicorn

        from federation.apps.agent_tokens import TokenRegistry, tokens_path
        from federation.apps.mcp_http import create_app

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        app = create_app(TokenRegistry(tokens_path(fed.settings.root)), fed)
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    access_log=False, log_config=None))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        import time

        deadline = time.monotonic() + 60
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "the server did not start in 60 s"
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{self.port}/mcp"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


@pytest.mark.parametrize("phase", [2, 4])
def test_two_federations_served_by_two_servers_a_dashboard_and_commands_in_one_process(two, phase, monkeypatch):
    """Two MCP HTTP servers in one process, each handed its own federation, answer a real MCP client each
    with that federation's data (the tools run on worker threads or inline); a message sent through one
    lands in its federation only; the dashboard's data, ``doctor`` and ``federation status`` of each show its
    own (the dead letters of the files, phase 2, too); the process's configured federation receives nothing."""
    import time

    import anyio
    from click.testing import CliRunner

    from federation.apps import agent_tokens
    from federation.apps.dashboard import DashboardData
    from federation.cli import main
    from federation.operations.doctor import doctor
    from test_mcp_http import http_agent

    a, b = two(phase)
    configured = config.settings()
    for fed, tag in ((a, "a"), (b, "b")):
        with fed.serve():
            messaging.send_message("carol", "bob", f"from {tag}")
            governance.create_poll("carol", f"{tag}?", ["yes", "no"])
    monkeypatch.setenv("FEDERATION_MAX_ATTEMPTS", "1")
    with a.serve():  # one dead letter, in a only: delivered once (the maximum), never acknowledged
        messaging.send_message("carol", "erin", "poison")
        assert len(messaging.receive("erin", lease=0.1)) == 1
    time.sleep(0.2)
    token = {fed: agent_tokens.add("bob", fed.settings.root)[0] for fed in (a, b)}
    servers = {a: _HttpServed(a), b: _HttpServed(b)}
    try:
        async def scenario() -> dict:
            seen = {}
            for fed, tag in ((a, "a"), (b, "b")):
                async with http_agent(servers[fed].url, token[fed], "bob") as bob:
                    inbox = await bob.ok("peek_inbox")
                    polls = await bob.ok("list_polls")
                    await bob.ok("send_message", recipient="dave", content=f"via {tag}'s server")
                    seen[tag] = ([m["content"] for m in inbox["messages"]], [p["question"] for p in polls["polls"]])
            return seen

        seen = anyio.run(scenario)
    finally:
        for server in servers.values():
            server.stop()
    assert seen == {"a": (["from a"], ["a?"]), "b": (["from b"], ["b?"])}
    for fed, tag, dead in ((a, "a", 1), (b, "b", 0)):
        with fed.serve():
            assert [m["content"] for m in messaging.peek_inbox("dave")] == [f"via {tag}'s server"]
        # the dashboard's data and doctor of each, outside any serve(): its own dead letters (phase 2: the files)
        page = DashboardData(fed.settings).page("24h")
        assert page["dead_letters"]["count"] == dead, page["problems"]
        check = {c.name: c for c in doctor(fed.settings).checks}["dead_letters"]
        assert check.detail.startswith("1 dead letters") if dead else check.detail == "no dead letters", check
        # a command of this process, handed this federation's root and database by its options
        db = fed.settings.db_url or str(fed.settings.db_path)
        run = CliRunner().invoke(main, ["status", "--json", "--root", str(fed.settings.root), "--db", db])
        assert run.exit_code == 0, run.output
        status = json.loads(run.output)
        assert status["root"] == str(fed.settings.root) and status["database"] == fed.settings.db_display
        if phase >= 3 or status.get("tables") is not None:
            assert status["tables"]["messages"] == 2 + dead, status  # to bob, to dave (and erin's): its own only
    assert config.settings() is configured and not (configured.root / "nodes").exists()


def test_two_federations_following_their_own_flags_in_one_process(tmp_path):
    """Neither federation is pinned: each follows its own live flag (a in phase 2, b in phase 3), served
    alternately from one process, and each one's compared calls are counted in its own ``control/``
    (one control-plane runtime per federation, issue 28: one per process switched between them and lost
    the other's flag at every switch)."""
    from federation import rollout

    made = []
    for name, phase in (("fa", 2), ("fb", 3)):
        s = config.settings_with({"FEDERATION_ROOT": str(tmp_path / name), "FEDERATION_DB": str(tmp_path / f"{name}.db"),
                                  "FEDERATION_DB_URL": None, "FEDERATION_USE_DB": None, "FEDERATION_PHASE": None,
                                  "FEDERATION_SHADOW_SAMPLE": None})
        rollout.set_phase(phase, sample=1.0, force=True, reason="test", settings=s)
        made.append((Federation(s), phase))
    for round_ in range(5):
        for fed, phase in made:
            assert fed.phase() == phase  # each its own flag, at every switch
            with fed.serve():
                context.set_context("alice", f"round {round_}")
                assert context.get_context("alice")["text"] == f"round {round_}"
    rollout.flush()
    for fed, phase in made:
        counted = rollout.counters(settings=fed.settings)
        assert {c["phase"] for c in counted} == {phase}  # none of the other federation's calls
        assert sum(c["comparisons"] for c in counted) >= 5
