"""What the agents do, on ``plan_core.state``: every change a load, a change of the cache, a save."""

import uuid
from datetime import datetime

from . import state
from .state import load_context, load_inbox, load_polls, load_session, save_context, save_inbox, save_polls, \
    save_session


def create_poll(creator, question, options):
    load_polls()
    poll_id = f"poll_{uuid.uuid4().hex[:8]}"
    state.active_polls[poll_id] = {"id": poll_id, "question": question, "options": list(options),
                                   "status": "open", "creator": creator,
                                   "created_at": datetime.now().isoformat(), "votes": {}}
    save_polls()
    return poll_id


def vote(poll_id, voter, option):
    load_polls()
    state.active_polls[poll_id]["votes"][voter] = option
    save_polls()


def update_context(agent, text):
    load_context(agent)
    state.CONTEXT[agent]["text"] = text
    state.CONTEXT[agent]["updated_at"] = datetime.now().isoformat()
    save_context(agent)


def start_session(sid, title, lead):
    now = datetime.now().isoformat()
    state.SESSIONS[sid] = {"id": sid, "title": title, "description": None, "lead": lead, "phase": "planning",
                           "created_at": now, "updated_at": now,
                           "roles": {lead: {"role": "lead", "subtask": None, "assigned_at": now}},
                           "artifacts": {}, "reviews": {}}
    save_session(sid)


def join_session(sid, agent, role):
    load_session(sid)
    session = state.SESSIONS[sid]
    session["roles"][agent] = {"role": role, "subtask": None, "assigned_at": datetime.now().isoformat()}
    save_session(sid)


def post(sender, recipient, content):
    msg = {"id": f"msg_{uuid.uuid4().hex[:12]}", "sender": sender, "recipient": recipient, "content": content,
           "message_type": "task", "reply_to": None, "timestamp": datetime.now().isoformat()}
    msgs = load_inbox(recipient)
    msgs.append(msg)
    save_inbox(recipient, msgs)
    state.append_history({"direction": "sent", **msg})
    return msg["id"]


def read_new(agent):
    msgs = load_inbox(agent)
    new = [m for m in msgs if not m.get("read")]
    for m in new:
        m["read"] = True
    save_inbox(agent, msgs)
    return new
