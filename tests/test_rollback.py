"""Rollback drill: what phase 3 did is what the file path shows after FEDERATION_USE_DB=0."""

from federation import context, governance, messaging


def test_phase_3_then_rollback_to_files(fed):
    """Polls, sessions, profiles and unread messages survive a rollback from phase 3 to phase 1 unchanged."""
    fed.phase(3)
    pid = governance.create_poll("alice", "Roll back?", ["yes", "no"])
    for voter, option in [("bob", "yes"), ("carol", "no"), ("bob", "no")]:
        governance.vote(pid, voter, option)
    closed = governance.create_poll("carol", "Closed one?", ["a", "b"])
    governance.vote(closed, "alice", "a")
    governance.close_poll(closed, "carol")
    sid = governance.create_session("alice", "Migration", "move to the database")
    governance.assign_role(sid, "bob", "reviewer", "read the report")
    governance.attach_artifact(sid, "report", "reports/consistency.txt")
    governance.review_artifact(sid, "report", "carol", "changes_requested", "one more run")
    governance.set_phase(sid, "review")
    context.set_profile("bob", "reviewer", {"languages": ["python", "sql"]})
    context.set_context("bob", "reviewing")
    context.set_expertise("bob", ["sql", "python"])
    read = messaging.send_message("alice", "bob", "already read")
    messaging.check_inbox("bob")
    unread = [messaging.send_message("carol", "bob", f"unread {i}") for i in range(3)]

    seen_in_3 = (governance.list_polls(), governance.list_sessions(), context.get_profile("bob"),
                 context.get_context("bob"), context.get_expertise("bob"), messaging.peek_inbox("bob"))

    fed.phase(1)
    seen_in_1 = (governance.list_polls(), governance.list_sessions(), context.get_profile("bob"),
                 context.get_context("bob"), context.get_expertise("bob"), messaging.peek_inbox("bob"))
    assert seen_in_1 == seen_in_3
    assert [m["id"] for m in seen_in_1[-1]] == unread and read not in unread
    # and the rolled-back federation keeps working on the files
    governance.vote(pid, "dave", "yes")
    assert governance.get_poll(pid)["tally"] == {"yes": 1, "no": 2}
