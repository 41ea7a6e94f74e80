"""The federation's state as a plan-style core keeps it: module globals, JSON files, plain writes.

Nothing here is safe under concurrent use, and nothing knows about databases,
locks or phases: every write is a plain ``write_text``; the caches are module
globals that a load fills and a save writes back.
"""

import json
import os
from pathlib import Path

ROOT = Path(os.environ.get("FEDERATION_ROOT", "/mnt/cluster/federation"))
POLLS_FILE = ROOT / "shared" / "polls.json"

active_polls = {}
CONTEXT = {}    # agent -> its context_window.json
SESSIONS = {}   # session id -> its shared/sessions/{id}.json


def load_polls():
    global active_polls
    path = ROOT / "shared" / "polls.json"
    active_polls = json.loads(path.read_text()) if path.exists() else {}


def save_polls():
    path = ROOT / "shared" / "polls.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(active_polls, indent=2))


def _node(agent):
    return ROOT / "nodes" / agent


def load_context(agent):
    path = _node(agent) / "context_window.json"
    if path.exists():
        CONTEXT[agent] = json.loads(path.read_text())
    else:
        CONTEXT[agent] = {"agent": agent, "text": "", "last_heartbeat": None, "updated_at": None}


def save_context(agent):
    path = _node(agent) / "context_window.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(CONTEXT[agent], indent=2))


def load_session(sid):
    path = ROOT / "shared" / "sessions" / f"{sid}.json"
    SESSIONS[sid] = json.loads(path.read_text())


def save_session(sid):
    path = ROOT / "shared" / "sessions" / f"{sid}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(SESSIONS[sid], indent=2))


def load_inbox(agent):
    path = _node(agent) / "inbox.json"
    return json.loads(path.read_text()) if path.exists() else []


def save_inbox(agent, msgs):
    path = _node(agent) / "inbox.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(msgs, indent=2))


def append_history(entry):
    with open(ROOT / "history.jsonl", "a") as fh:
        fh.write(json.dumps(entry) + "\n")
