"""The dual-write shim: routing by phase, shadow comparison, events, deltas, the backfill guard."""

from __future__ import annotations

import json

import pytest
import structlog

import shim
from federation import config, context, core, governance, messaging
from federation.errors import BackfillRequiredError, ConflictError, NotFoundError


def _events(logs, name):
    return [e for e in logs if e["event"] == name]


def test_core_functions_are_wrapped():
    """Installing the shim is one line in federation/__init__.py; every SHIM_SPEC function is wrapped."""
    exp = shim.installed(core)
    assert exp is not None
    for name in core.SHIM_SPEC:
        assert getattr(core, name).__wrapped__ is exp.originals[name]


def test_phase_1_touches_no_database(fed):
    """FEDERATION_USE_DB=0 runs the original file functions and never creates the database."""
    fed.phase(1)
    pid = governance.create_poll("alice", "Files only?", ["yes", "no"])
    governance.vote(pid, "bob", "yes")
    assert json.loads((fed.root / "shared" / "polls.json").read_text())[pid]["votes"] == {"bob": "yes"}
    assert not fed.db_path.exists()


def test_phase_4_writes_no_files(fed):
    """Phase 4 serves and writes the database only: the legacy tree stays empty."""
    fed.phase(4)
    pid = governance.create_poll("alice", "DB only?", ["yes", "no"])
    governance.vote(pid, "bob", "yes")
    messaging.send_message("alice", "bob", "hi")
    assert not (fed.root / "shared" / "polls.json").exists()
    assert not (fed.root / "nodes").exists()
    assert fed.store().load_poll(pid)["votes"] == {"bob": "yes"}


@pytest.mark.parametrize("phase", [2, 3])
def test_dual_phases_write_both_sides(fed, phase):
    """Phases 2 and 3 write every change to the files and to the database."""
    fed.phase(phase)
    pid = governance.create_poll("alice", "Both?", ["yes", "no"])
    governance.vote(pid, "bob", "no")
    context.set_profile("bob", "reviewer", {"careful": True})
    files = json.loads((fed.root / "shared" / "polls.json").read_text())[pid]
    assert files["votes"] == {"bob": "no"} == fed.store().load_poll(pid)["votes"]
    assert json.loads((fed.root / "nodes" / "bob" / "profile.json").read_text())["traits"] == {"careful": True}
    assert fed.store().load_profile("bob")["traits"] == {"careful": True}


def test_file_edited_behind_the_shim_is_reported(fed):
    """Phase 3: a polls.json edited by hand produces shadow_mismatch naming entity, key and field."""
    fed.phase(3)
    pid = governance.create_poll("alice", "Edited?", ["yes", "no"])
    governance.vote(pid, "bob", "yes")
    path = fed.root / "shared" / "polls.json"
    data = json.loads(path.read_text())
    data[pid]["votes"]["bob"] = "no"
    path.write_text(json.dumps(data))
    with structlog.testing.capture_logs() as logs:
        poll = governance.get_poll(pid)
    assert poll["votes"] == {"bob": "yes"}  # phase 3 serves the database
    [event] = _events(logs, "shadow_mismatch")
    assert event["entity"] == "polls" and event["key"] == pid and event["phase"] == 3 and event["op"] == "load_poll"
    assert event["diff"] == [{"field": "votes.bob", "db": "yes", "files": "no"}]


def test_row_changed_behind_the_shim_is_reported_in_phase_2(fed):
    """Phase 2: a database row changed behind the shim's back is reported; the files are served."""
    fed.phase(2)
    context.set_context("bob", "original")
    fed.store().db.execute("UPDATE context SET text = ? WHERE agent = ?", ("tampered", "bob"))
    with structlog.testing.capture_logs() as logs:
        got = context.get_context("bob")
    assert got["text"] == "original"
    [event] = _events(logs, "shadow_mismatch")
    assert (event["entity"], event["key"], event["phase"]) == ("context", "bob", 2)
    assert event["diff"][0]["field"] == "text"


def test_deleted_message_file_is_reported(fed):
    """A message present in the database but missing from the files is a mismatch keyed by message id."""
    fed.phase(3)
    mid = messaging.send_message("alice", "bob", "hello")
    (fed.root / "nodes" / "bob" / "inbox" / f"{mid}.json").unlink()
    with structlog.testing.capture_logs() as logs:
        assert [m["id"] for m in messaging.peek_inbox("bob")] == [mid]
    [event] = _events(logs, "shadow_mismatch")
    assert event["entity"] == "messages" and event["key"] == mid


def test_failing_secondary_side_is_logged_not_raised(fed):
    """Phase 3: when the file side fails, the vote still succeeds and shadow_error is published."""
    fed.phase(3)
    pid = governance.create_poll("alice", "Broken file?", ["yes", "no"])
    (fed.root / "shared" / "polls.json").write_text("{ not json")
    with structlog.testing.capture_logs() as logs:
        governance.vote(pid, "bob", "yes")
    assert fed.store().load_poll(pid)["votes"] == {"bob": "yes"}
    [event] = _events(logs, "shadow_error")
    assert event["side"] == "files" and event["op"] == "save_vote" and "CorruptFileError" in event["error"]
    assert (fed.root / "shared" / "polls.json").read_text() == "{ not json"  # never overwritten


def test_failing_authoritative_side_fails_and_skips_the_other(fed):
    """Phase 3: a vote the database refuses (closed poll) raises and is not written to the files."""
    fed.phase(3)
    pid = governance.create_poll("alice", "Closed?", ["yes", "no"])
    governance.close_poll(pid, "alice")
    before = (fed.root / "shared" / "polls.json").read_bytes()
    with pytest.raises(ConflictError):
        governance.vote(pid, "bob", "yes")
    assert (fed.root / "shared" / "polls.json").read_bytes() == before


def test_shadow_sample_zero_compares_nothing(fed):
    """FEDERATION_SHADOW_SAMPLE=0 serves reads without reading the other side."""
    fed.env["FEDERATION_SHADOW_SAMPLE"] = "0"
    fed.phase(3)
    context.set_context("bob", "x")
    (fed.root / "nodes" / "bob" / "context_window.json").write_text('{"text": "changed"}')
    with structlog.testing.capture_logs() as logs:
        assert context.get_context("bob")["text"] == "x"
    assert _events(logs, "shadow_mismatch") == []


def test_backfill_guard_refuses_phase_3_and_4(fed):
    """A database never backfilled while legacy files exist is refused in phases 3-4, allowed in phase 2."""
    fed.phase(1)
    pid = governance.create_poll("alice", "Legacy?", ["yes", "no"])
    for phase in (3, 4):
        fed.phase(phase)
        with pytest.raises(BackfillRequiredError, match="federation migrate"):
            governance.get_poll(pid)
    fed.phase(2)
    assert governance.get_poll(pid)["question"] == "Legacy?"  # served from the files
    fed.store().mark_backfilled("test")  # the migration's last step (without its import, for this test)
    fed.phase(3)
    with pytest.raises(NotFoundError):  # no longer refused: served from the (unfilled) database
        governance.get_poll(pid)


def test_new_federation_counts_as_backfilled(fed):
    """A database created with no legacy files is not refused after its dual-writes created files."""
    fed.phase(2)
    pid = governance.create_poll("alice", "New?", ["yes", "no"])
    from federation.sqlstore import forget_stores

    forget_stores()  # a restart
    fed.phase(3)
    assert governance.get_poll(pid)["question"] == "New?"


@pytest.mark.parametrize("phase", [2, 3, 4])
def test_whole_document_save_is_a_delta(fed, phase):
    """save_polls() writes only what this caller changed since it loaded."""
    fed.phase(phase)
    pid = governance.create_poll("alice", "Delta?", ["yes", "no"])
    polls = core.load_polls()
    governance.vote(pid, "carol", "yes")  # someone else, after our load
    polls[pid]["votes"]["dave"] = "no"
    core.save_polls(polls)
    assert governance.get_poll(pid)["votes"] == {"carol": "yes", "dave": "no"}


def test_bad_phase_value_fails_at_start(fed):
    """A nonsense FEDERATION_PHASE is refused with the variable's name and the accepted values."""
    fed.env["FEDERATION_PHASE"] = "five"
    from federation.errors import ConfigError

    with pytest.raises(ConfigError, match=r"FEDERATION_PHASE='five' is not accepted: use 2, 3 or 4"):
        fed.apply()
        config.settings()


def test_shim_is_generic():
    """The shim wraps any module's load_/save_ functions, with no knowledge of the federation."""
    import types

    mod = types.ModuleType("toy_store")
    mod.data = {}
    mod.load_thing = lambda key: mod.data.get(key)

    def save_thing(key, value):
        mod.data[key] = value

    mod.save_thing = save_thing

    class Candidate:
        def __init__(self):
            self.data = {}

        def load_thing(self, key):
            return self.data.get(key)

        def save_thing(self, key, value):
            self.data[key] = value

    cand = Candidate()
    phase = [3]
    shim.install(mod, candidate=lambda p: cand, mode=lambda: (phase[0], 1.0),
                 spec={"load_thing": {"entity": "things", "key": lambda k: k},
                       "save_thing": {"entity": "things", "key": lambda k, v: k}})
    try:
        mod.save_thing("a", 1)
        assert mod.data == {"a": 1} and cand.data == {"a": 1}
        mod.data["a"] = 2
        with structlog.testing.capture_logs() as logs:
            assert mod.load_thing("a") == 1
        assert [(e["event"], e["key"]) for e in logs] == [("shadow_mismatch", "a")]
        phase[0] = 1
        assert mod.load_thing("a") == 2
    finally:
        shim.uninstall(mod)
    assert mod.save_thing is save_thing


def test_post_import_hook_patches_a_module_on_import(tmp_path, monkeypatch):
    """install_when_imported patches a module that cannot be edited, at the moment it is imported."""
    import sys

    (tmp_path / "legacy_core.py").write_text(
        "STATE = {}\n"
        "def load_flag(name):\n    return STATE.get(name)\n"
        "def save_flag(name, value):\n    STATE[name] = value\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    class Candidate:
        rows: dict = {}

        def load_flag(self, name):
            return self.rows.get(name)

        def save_flag(self, name, value):
            self.rows[name] = value

    cand = Candidate()
    shim.install_when_imported("legacy_core", candidate=lambda p: cand, mode=lambda: (4, 1.0))
    import legacy_core

    try:
        legacy_core.save_flag("x", 1)
        assert cand.rows == {"x": 1} and legacy_core.STATE == {}  # phase 4: the database only
    finally:
        shim.uninstall(legacy_core)
        sys.modules.pop("legacy_core", None)
