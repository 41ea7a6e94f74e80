"""Sessions have owners (issue 25): the phase and the roles are the lead's, artifacts and reviews the members'.

The Python functions with ``by=AGENT``, on both engines and on the files (phase 1), and real
``federation serve`` processes driven by the SDK's stdio client: an agent with no part in a session
gets ``forbidden:``, the lead gets its way, reading stays open.
"""

from __future__ import annotations

import anyio
import pytest

from federation import governance
from federation.errors import NotFoundError, PermissionDeniedError, ValidationError

from test_mcp_server import agent_server


@pytest.mark.parametrize("phase", [1, 3])
def test_by_enforces_the_lead_and_the_members(fed, phase):
    fed.phase(phase)
    sid = governance.create_session("alice", "Plan the move")
    before = governance.get_session(sid)
    outsider = [
        lambda: governance.set_phase(sid, "hijacked", by="mallory"),
        lambda: governance.assign_role(sid, "mallory", "lead", by="mallory"),
        lambda: governance.attach_artifact(sid, "plan", "evil.md", by="mallory"),
        lambda: governance.review_artifact(sid, "plan", "mallory", "approved", by="mallory"),
    ]
    for call in outsider:
        with pytest.raises(PermissionDeniedError, match="'mallory' may not"):
            call()
    assert governance.get_session(sid) == before  # nothing written
    # the lead: roles, phase, artifacts, reviews
    governance.assign_role(sid, "bob", "reviewer", "read it", by="alice")
    governance.set_phase(sid, "executing", by="alice")
    governance.attach_artifact(sid, "plan", "docs/plan.md", by="alice")
    governance.review_artifact(sid, "plan", "alice", "approved", by="alice")
    # a member: artifacts and its own reviews, not the phase or the roles
    governance.attach_artifact(sid, "code", "src/x.py", by="bob")
    governance.review_artifact(sid, "plan", "bob", "changes_requested", "one more run", by="bob")
    with pytest.raises(PermissionDeniedError, match="only its lead 'alice'"):
        governance.set_phase(sid, "done", by="bob")
    with pytest.raises(PermissionDeniedError):
        governance.assign_role(sid, "bob", "lead", by="bob")
    with pytest.raises(PermissionDeniedError, match="review as 'alice'"):
        governance.review_artifact(sid, "plan", "alice", "changes_requested", by="bob")
    session = governance.get_session(sid)
    assert session["phase"] == "executing" and set(session["roles"]) == {"bob"}
    assert set(session["artifacts"]) == {"plan", "code"}
    assert {r: v["status"] for r, v in session["reviews"]["plan"].items()} == {
        "alice": "approved", "bob": "changes_requested"}
    # bad input first, then the session, then the right
    with pytest.raises(NotFoundError):
        governance.set_phase("0" * 32, "x", by="alice")
    with pytest.raises(ValidationError, match="by"):
        governance.set_phase(sid, "x", by="../alice")
    # without by, nothing changes for existing callers
    governance.set_phase(sid, "review")
    governance.assign_role(sid, "carol", "tester")
    assert governance.get_session(sid)["phase"] == "review"


def test_over_mcp_an_outsider_is_forbidden_and_the_lead_is_not(fed):
    """mallory (no part in alice's session) gets `forbidden:` for set_phase, assign_role (itself as lead),
    attach_artifact and review_artifact, and still reads the session; alice's calls succeed; once alice gives
    mallory a role, mallory may attach and review, still not set the phase."""

    async def scenario():
        async with agent_server(fed, "alice") as alice, agent_server(fed, "mallory") as mallory:
            sid = (await alice.ok("create_session", title="Alice's session"))["session_id"]
            await alice.ok("attach_artifact", session_id=sid, artifact_type="plan", path="docs/plan.md")
            refused = [
                ("set_phase", {"session_id": sid, "phase": "hijacked"}),
                ("assign_role", {"session_id": sid, "agent": "mallory", "role": "lead"}),
                ("attach_artifact", {"session_id": sid, "artifact_type": "plan", "path": "evil.md"}),
                ("review_artifact", {"session_id": sid, "artifact_type": "plan", "status": "approved"}),
            ]
            for tool, arguments in refused:
                text = (await mallory.error(tool, **arguments)).removeprefix(f"Error executing tool {tool}: ")
                assert text.startswith("forbidden: 'mallory' may not"), (tool, text)
            untouched = (await mallory.ok("get_session", session_id=sid))["session"]  # reading stays open
            await alice.ok("set_phase", session_id=sid, phase="executing")
            await alice.ok("assign_role", session_id=sid, agent="mallory", role="reviewer")
            await mallory.ok("review_artifact", session_id=sid, artifact_type="plan", status="approved")
            await mallory.ok("attach_artifact", session_id=sid, artifact_type="notes", path="notes.md")
            still = (await mallory.error("set_phase", session_id=sid, phase="done")).removeprefix(
                "Error executing tool set_phase: ")
            after = (await alice.ok("get_session", session_id=sid))["session"]
            return untouched, still, after

    untouched, still, after = anyio.run(scenario)
    assert untouched["phase"] == "planning" and untouched["roles"] == {} and untouched["reviews"] == {}
    assert untouched["artifacts"]["plan"]["path"] == "docs/plan.md"
    assert still.startswith("forbidden:") and "only its lead 'alice'" in still
    assert after["phase"] == "executing" and after["roles"]["mallory"]["role"] == "reviewer"
    assert set(after["artifacts"]) == {"plan", "notes"} and list(after["reviews"]["plan"]) == ["mallory"]
