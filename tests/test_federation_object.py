"""The composition root (issue 28): a ``Federation`` built once from one ``Settings`` serves its own files
and database; two in one process never see each other's data, also from two threads at once."""

from __future__ import annotations

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
