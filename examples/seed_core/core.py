"""The federation's state as the migration plan's core.py keeps it: JSON files, module globals.

Left exactly as a team would have it before adopting the shim: nothing here is
safe under concurrent use (every write is a plain ``write_text``; ``vote`` is a
read-modify-write of the whole ``polls.json``), and nothing here knows about
databases, locks or phases.
"""

import json
import os
import time
import uuid
from datetime import datetime
from pathlib import Path

ROOT = Path(os.environ.get("FEDERATION_ROOT", "/mnt/cluster/federation"))
POLLS_FILE = ROOT / "shared" / "polls.json"

active_polls = {}


def load_polls():
    global active_polls
    if POLLS_FILE.exists():
        active_polls = json.loads(POLLS_FILE.read_text())
    else:
        active_polls = {}


def save_polls():
    POLLS_FILE.parent.mkdir(parents=True, exist_ok=True)
    POLLS_FILE.write_text(json.dumps(active_polls, indent=2))


def create_poll(creator, question, options):
    load_polls()
    poll_id = f"poll_{uuid.uuid4().hex[:8]}"
    active_polls[poll_id] = {"id": poll_id, "question": question, "options": list(options), "status": "open",
                             "creator": creator, "created_at": datetime.now().isoformat(), "votes": {}}
    save_polls()
    return poll_id


def vote(poll_id, voter, option):
    load_polls()
    poll = active_polls[poll_id]
    if poll["status"] != "open" or option not in poll["options"]:
        raise ValueError(f"cannot vote {option!r} on {poll_id}")
    poll["votes"][voter] = option
    save_polls()


def _node(agent):
    return ROOT / "nodes" / agent


def load_context(agent):
    path = _node(agent) / "context_window.json"
    if not path.exists():
        return None
    return json.loads(path.read_text())


def save_context(agent, text):
    ctx = load_context(agent) or {"agent": agent, "text": "", "last_heartbeat": None}
    ctx["text"] = text
    ctx["updated_at"] = datetime.now().isoformat()
    path = _node(agent) / "context_window.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(ctx, indent=2))


def send(sender, recipient, content, message_type="task", reply_to=None):
    msg_id = f"msg_{int(time.time() * 1000)}_{uuid.uuid4().hex[:6]}"
    msg = {"id": msg_id, "sender": sender, "recipient": recipient, "content": content,
           "message_type": message_type, "reply_to": reply_to, "timestamp": datetime.now().isoformat()}
    inbox = _node(recipient) / "inbox"
    inbox.mkdir(parents=True, exist_ok=True)
    (inbox / f"{msg_id}.json").write_text(json.dumps(msg, indent=2))
    return msg_id


def check_inbox(agent):
    inbox = _node(agent) / "inbox"
    if not inbox.exists():
        return []
    messages = []
    for f in sorted(inbox.glob("*.json")):
        messages.append(json.loads(f.read_text()))
        f.unlink()
    return messages
