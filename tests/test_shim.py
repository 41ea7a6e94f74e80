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
    from federation.stores.sqlstore import forget_stores

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
    mod, cand, phase = _toy([])
    original = shim.installed(mod).originals["save_thing"]
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
    assert mod.save_thing is original


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


def test_phase_knows_its_sides():
    """Each phase names its authoritative side, its shadow side and whether it is dual."""
    from shim import DB, FILES, Phase

    assert [(p.authority, p.shadow, p.dual) for p in Phase] == [
        (FILES, None, False), (FILES, DB, True), (DB, FILES, True), (DB, None, False)]
    assert Phase(3) is Phase.DB_THEN_FILES and Phase.DB_THEN_FILES == 3


_toy_names = __import__("itertools").count()


def _toy(observers):
    """A toy module and candidate store with the shim installed on it (phase in a list)."""
    import types

    mod = types.ModuleType(f"toy_store_{next(_toy_names)}")
    mod.data = {}
    mod.load_thing = lambda key: mod.data.get(key)

    def save_thing(key, value):
        if value == "refuse":
            raise ValueError("refused")
        mod.data[key] = value

    mod.save_thing = save_thing

    class Candidate:
        data: dict = {}

        def load_thing(self, key):
            return self.data.get(key)

        def save_thing(self, key, value):
            self.data[key] = value

    cand = Candidate()
    cand.data = {}
    phase = [3, 1.0]
    shim.install(mod, candidate=lambda p: cand, mode=lambda: (phase[0], phase[1]), observers=observers,
                 spec={"load_thing": {"entity": "things", "key": lambda k: k},
                       "save_thing": {"entity": "things", "key": lambda k, v: k}})
    return mod, cand, phase


def test_observers_get_one_observation_per_dual_call():
    """Every dual-phase call is published once, with both sides' outcomes and the mismatches found."""
    from shim import Phase

    seen = []
    mod, cand, phase = _toy([seen.append])
    try:
        mod.save_thing("a", 1)                 # phase 3: the database first, then the files
        mod.data["a"] = 2                      # the files edited behind the shim's back
        assert mod.load_thing("a") == 1        # served from the database, compared with the files
        phase[0] = 2
        assert mod.load_thing("a") == 2        # served from the files
        phase[0] = 4
        mod.load_thing("a")                    # one side only: nothing to observe
        phase[0], phase[1] = 3, 0.0
        mod.load_thing("a")                    # not sampled: nothing compared, nothing observed
    finally:
        shim.uninstall(mod)
    write, read3, read2 = seen
    assert (write.name, write.phase, write.compared, write.mismatches) == ("save_thing", Phase.DB_THEN_FILES, False, [])
    assert (write.control.side, write.candidate.side) == ("db", "files")
    assert read3.compared and read3.entity == "things" and read3.key == "a"
    assert [(m.key, m.diff) for m in read3.mismatches] == [("a", [{"field": "(value)", "db": 1, "files": 2}])]
    assert read3.control.value == 1 and read3.candidate.value == 2
    assert read3.control.seconds > 0 and read3.candidate.seconds > 0
    assert read2.phase is Phase.FILES_THEN_DB and read2.control.side == "files"
    assert read2.mismatches[0].diff == [{"field": "(value)", "files": 2, "db": 1}]


def test_shadow_failure_is_an_observation_with_an_error():
    """A failing shadow side reaches observers as an outcome with its exception, not as a raise."""
    seen = []
    mod, cand, phase = _toy([seen.append])
    try:
        with structlog.testing.capture_logs() as logs:
            mod.save_thing("k", "refuse")      # the database accepts, the files raise
        assert cand.data == {"k": "refuse"}
    finally:
        shim.uninstall(mod)
    [obs] = seen
    assert isinstance(obs.candidate.error, ValueError) and not obs.compared
    [event] = _events(logs, "shadow_error")
    assert event["side"] == "files" and event["error"] == "ValueError: refused"


def test_a_broken_observer_never_reaches_the_caller():
    """An observer that raises is logged as shim_observer_failed; the call still returns its value."""
    def broken(obs):
        raise RuntimeError("observer bug")

    mod, cand, phase = _toy([broken])
    try:
        with structlog.testing.capture_logs() as logs:
            mod.save_thing("a", 1)
            assert mod.load_thing("a") == 1
    finally:
        shim.uninstall(mod)
    assert len(_events(logs, "shim_observer_failed")) == 2


def test_phase_env_and_overrides():
    """phase_env maps a phase to its variables; set_overrides and clear_overrides are the public switch."""
    from federation.errors import ConfigError

    assert config.phase_env(1) == {"FEDERATION_USE_DB": "0"}
    assert config.phase_env(4) == {"FEDERATION_USE_DB": "1", "FEDERATION_PHASE": "4"}
    with pytest.raises(ConfigError):
        config.phase_env(5)
    with pytest.raises(ConfigError, match="unknown setting"):
        config.set_overrides({"FEDERATION_PAHSE": "2"})
    try:
        config.set_overrides(config.phase_env(2), replace=True)
        assert config.settings().effective_phase == 2
        config.set_overrides(config.phase_env(1))
        assert config.settings().effective_phase == 1
    finally:
        config.clear_overrides()


def test_generic_shim_refuses_a_zero_argument_whole_document_save():
    """shim.install with document= on save_polls() (no parameter) is refused; a call with no document raises
    shim.SpecError and writes nothing — never a bare StopIteration."""
    import types

    mod = types.ModuleType("zero_arg_core")
    mod.state = {}
    mod.load_polls = lambda: dict(mod.state)

    def save_polls():
        mod.state["written"] = True

    mod.save_polls = save_polls

    class Store:
        def load_polls(self):
            return {}

        def save_polls(self, doc):
            raise AssertionError("must not be written")

    hooks = dict(candidate=lambda p: Store(), mode=lambda: (2, 1.0),
                 spec={"load_polls": {"entity": "polls", "document": "polls"},
                       "save_polls": {"entity": "polls", "document": "polls"}})
    with pytest.raises(shim.SpecError, match=r"zero_arg_core\.save_polls: a whole-document save"):
        shim.install(mod, **hooks)
    assert shim.installed(mod) is None

    def save_many(*docs):  # takes arguments, so install accepts it; a call with none is refused
        mod.state["written"] = True

    mod.save_polls = save_many
    shim.install(mod, **hooks)
    try:
        with pytest.raises(shim.SpecError, match=r"save_polls\(\) was called with no argument"):
            mod.save_polls()
        assert mod.state == {}
    finally:
        shim.uninstall(mod)
