"""Property: the file store and the SQL store, driven by the same operations, end in the same state.

One hypothesis state machine drives four federations side by side — phase 1
(files only), 2, 3 and 4 (database only) — with the same random sequence of
CONTRACT operations and the same clock.  Every operation must give the same
result (or the same error) everywhere, the observable state must stay equal,
and the dual-write phases must not publish a single shadow_mismatch or
shadow_error, since nothing interferes from outside.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
import structlog
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test

from federation.domain import clock as _clock
from federation import config, context, governance, messaging
from federation.errors import FederationError
from federation.stores import file_history
from federation.stores.sqlstore import forget_stores

AGENTS = ["alice", "bob", "carol"]
agents = st.sampled_from(AGENTS)
words = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=0, max_size=12)
options = st.sampled_from(["yes", "no", "maybe", "it's; DROP TABLE polls;--"])


class Sides:
    def __init__(self, db_env):
        self.tmp = Path(tempfile.mkdtemp(prefix="fed-equiv-"))
        self.envs = {}
        for phase in (1, 2, 3, 4):
            root = self.tmp / f"phase{phase}"
            root.mkdir()
            env = db_env(root / "federation.db")  # each side its own database, on the test's engine
            env.update(FEDERATION_ROOT=str(root), **config.phase_env(phase))
            self.envs[phase] = env
        self.step = 0

    def enter(self, phase: int) -> None:
        config.set_overrides(self.envs[phase], replace=True)

    def run(self, fn, *args):
        """Run fn(*args) in every phase with the same clock; the results, by phase."""
        self.step += 1
        results = {}
        for phase in self.envs:
            self.enter(phase)
            counter = iter(range(1, 10_000))
            _clock.now = lambda: f"2026-01-01T00:{self.step // 60:02d}:{self.step % 60:02d}.{next(counter):06d}+00:00"
            id_counter = iter(range(1, 10_000))
            _clock.new_id = lambda: f"id{self.step:05d}x{next(id_counter):03d}"
            try:
                results[phase] = ("ok", fn(*args))
            except FederationError as exc:
                results[phase] = ("error", type(exc).__name__)
        first = results[1]
        for phase, result in results.items():
            assert result == first, f"phase {phase} gave {result!r}, phase 1 gave {first!r} for {fn.__name__}{args}"
        return first

    def close(self) -> None:
        forget_stores()
        shutil.rmtree(self.tmp, ignore_errors=True)


def pulse(agent: str, claim: bool) -> dict:
    """pulse without "phase" (which names the side it ran on)."""
    return {k: v for k, v in messaging.pulse(agent, claim).items() if k != "phase"}


def pulse_leasing(agent: str, ack: list[str]) -> dict:
    """pulse acknowledging *ack*, then leasing for 2 s (without "phase")."""
    return {k: v for k, v in messaging.pulse(agent, lease=2, ack=ack).items() if k != "phase"}


def sent_without_receipts(agent: str) -> list[dict]:
    """get_sent without read_at: phase 1 keeps no receipts (documented), the other fields agree."""
    return [{k: v for k, v in m.items() if k != "read_at"} for m in messaging.get_sent(agent, 50)]


def history_page(agent: str, size: int) -> list[dict]:
    """The history page just before the newest *size* entries (a cursor made from an entry)."""
    newest = messaging.get_history(agent, size)
    if not newest:
        return []
    return messaging.get_history(agent, size, before=messaging.history_cursor(newest[0]))


def observable_state() -> dict:
    agents_known = context.list_agents()
    return {
        "polls": governance.list_polls(),
        "sessions": governance.list_sessions(),
        "agents": agents_known,
        "per_agent": {a: (context.get_context(a), context.get_expertise(a), context.get_profile(a),
                          messaging.peek_inbox(a), messaging.get_history(a), messaging.dead_letters(a))
                      for a in AGENTS},
        "experts": {d: context.find_experts(d) for d in ("sql", "python")},
    }


def make_machine(db_env):
    class Federations(RuleBasedStateMachine):
        polls = Bundle("polls")
        sessions = Bundle("sessions")

        def __init__(self):
            super().__init__()
            file_history._history.clear()
            file_history._sent.clear()
            self.sides = Sides(db_env)
            self.received: list[str] = []

        def teardown(self):
            self.sides.close()

        @initialize(target=polls)
        def first_poll(self):
            return self.sides.run(governance.create_poll, "alice", "Ship it?", ["yes", "no"])[1]

        @rule(target=polls, creator=agents, question=words, opts=st.lists(options, max_size=4))
        def create_poll(self, creator, question, opts):
            outcome = self.sides.run(governance.create_poll, creator, question, opts)
            return outcome[1] if outcome[0] == "ok" else "id99999x001"

        @rule(poll=polls, voter=agents, option=options)
        def vote(self, poll, voter, option):
            self.sides.run(governance.vote, poll, voter, option)

        @rule(poll=polls, agent=agents)
        def close_poll(self, poll, agent):
            self.sides.run(governance.close_poll, poll, agent)

        @rule(sender=agents, recipient=st.sampled_from(AGENTS + ["../x"]), content=words)
        def send_message(self, sender, recipient, content):
            self.sides.run(messaging.send_message, sender, recipient, content)

        @rule(agent=agents)
        def check_inbox(self, agent):
            self.sides.run(messaging.check_inbox, agent)

        @rule(agent=agents, text=words)
        def set_context(self, agent, text):
            self.sides.run(context.set_context, agent, text)

        @rule(agent=agents)
        def heartbeat(self, agent):
            self.sides.run(context.heartbeat, agent)

        @rule(agent=agents, domains=st.lists(st.sampled_from(["sql", "python", "ops"]), max_size=3))
        def set_expertise(self, agent, domains):
            self.sides.run(context.set_expertise, agent, domains)

        @rule(agent=agents, role=st.none() | st.sampled_from(["lead", "reviewer"]),
              traits=st.none() | st.dictionaries(st.sampled_from(["careful", "fast"]), st.booleans()))
        def set_profile(self, agent, role, traits):
            self.sides.run(context.set_profile, agent, role, traits)

        @rule(target=sessions, lead=agents, title=words)
        def create_session(self, lead, title):
            outcome = self.sides.run(governance.create_session, lead, title, None)
            return outcome[1] if outcome[0] == "ok" else "id99999x002"

        @rule(session=sessions, agent=agents, role=st.sampled_from(["dev", "reviewer"]),
              subtask=st.none() | words)
        def assign_role(self, session, agent, role, subtask):
            self.sides.run(governance.assign_role, session, agent, role, subtask)

        @rule(session=sessions, kind=st.sampled_from(["design", "code"]), path=words)
        def attach_artifact(self, session, kind, path):
            self.sides.run(governance.attach_artifact, session, kind, path)

        @rule(session=sessions, kind=st.sampled_from(["design", "code"]), reviewer=agents,
              status=st.sampled_from(["approved", "changes_requested", "maybe"]), comments=st.none() | words)
        def review_artifact(self, session, kind, reviewer, status, comments):
            self.sides.run(governance.review_artifact, session, kind, reviewer, status, comments)

        @rule(session=sessions, phase=st.sampled_from(["planning", "executing", "done"]))
        def set_phase(self, session, phase):
            self.sides.run(governance.set_phase, session, phase)

        @rule(agent=agents, claim=st.booleans())
        def pulse(self, agent, claim):
            self.sides.run(pulse, agent, claim)

        # delivery with leases and acks (issue 19): each step advances the shared clock by one second,
        # so a lease of 1-2 s runs out within the run and the message comes back, then dies (max 2)
        @rule(agent=agents, lease=st.sampled_from([1, 2, 3600]), limit=st.none() | st.integers(1, 2))
        def receive(self, agent, lease, limit):
            status, got = self.sides.run(messaging.receive, agent, lease, limit)
            if status == "ok":
                self.received += [m["id"] for m in got]

        @rule(agent=agents, data=st.data())
        def ack(self, agent, data):
            ids = data.draw(st.lists(st.sampled_from(self.received), max_size=3)) if self.received else []
            self.sides.run(messaging.ack, agent, ids + ["unknown"])

        @rule(agent=agents, data=st.data())
        def pulse_lease(self, agent, data):
            ids = data.draw(st.lists(st.sampled_from(self.received), max_size=2)) if self.received else []
            status, tick = self.sides.run(pulse_leasing, agent, ids)
            if status == "ok":
                self.received += [m["id"] for m in tick["messages"]]

        @rule(sender=agents, recipient=agents, key=st.sampled_from(["k1", "k2"]), content=words)
        def send_keyed(self, sender, recipient, key, content):
            self.sides.run(messaging.send_message, sender, recipient, content, "task", None, key)

        @rule(sender=agents, content=words, role=st.none() | st.sampled_from(["lead", "reviewer", "nobody"]))
        def broadcast(self, sender, content, role):
            self.sides.run(messaging.broadcast, sender, content, "info", role)

        @rule(status=st.none() | st.sampled_from(["open", "closed"]), limit=st.integers(0, 3),
              after=st.none() | polls)
        def list_polls_page(self, status, limit, after):
            self.sides.run(governance.list_polls, status, limit, after)

        @rule(limit=st.integers(1, 3), after=st.none() | sessions)
        def list_sessions_page(self, limit, after):
            self.sides.run(governance.list_sessions, limit, after)

        @rule(agent=agents)
        def get_sent(self, agent):
            self.sides.run(sent_without_receipts, agent)

        @rule(agent=agents, size=st.integers(1, 3))
        def history_before(self, agent, size):
            self.sides.run(history_page, agent, size)

        @invariant()
        def same_observable_state(self):
            self.sides.run(observable_state)

    return Federations


def test_file_and_sql_stores_end_in_the_same_state(fed, monkeypatch):
    """Random CONTRACT operation sequences: phases 1-4 agree, and phases 2-3 publish no mismatch."""
    monkeypatch.setattr(_clock, "now", _clock.now)
    monkeypatch.setattr(_clock, "new_id", _clock.new_id)
    monkeypatch.setenv("FEDERATION_MAX_ATTEMPTS", "2")
    machine = make_machine(fed.database_env)
    with structlog.testing.capture_logs() as logs:
        run_state_machine_as_test(machine, settings=settings(
            max_examples=30, stateful_step_count=25, deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]))
    events = [e for e in logs if e["event"] in ("shadow_mismatch", "shadow_error")]
    assert events == []
