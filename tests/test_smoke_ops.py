"""Every CONTRACT operation works in every phase (quick sanity)."""

import pytest

from federation import context, governance, messaging


@pytest.mark.parametrize("phase", [1, 2, 3, 4])
def test_operations_round_trip(fed, phase):
    """A poll, a message, context and a session behave the same in each phase."""
    fed.phase(phase)
    pid = governance.create_poll("alice", "Lunch?", ["pizza", "sushi"])
    governance.vote(pid, "bob", "pizza")
    governance.vote(pid, "carol", "sushi")
    governance.vote(pid, "bob", "sushi")
    assert governance.get_poll(pid)["tally"] == {"pizza": 0, "sushi": 2}
    mid = messaging.send_message("alice", "bob", "hello")
    assert [m["id"] for m in messaging.peek_inbox("bob")] == [mid]
    assert [m["id"] for m in messaging.check_inbox("bob")] == [mid]
    assert messaging.check_inbox("bob") == []
    context.set_context("bob", "busy")
    context.heartbeat("bob")
    ctx = context.get_context("bob")
    assert ctx["text"] == "busy" and ctx["last_heartbeat"]
    sid = governance.create_session("alice", "Build")
    governance.attach_artifact(sid, "design", "docs/design.md")
    governance.review_artifact(sid, "design", "carol", "approved")
    assert governance.get_session(sid)["reviews"]["design"]["carol"]["status"] == "approved"
    assert governance.close_poll(pid, "alice")["status"] == "closed"
