"""A generator of legacy file trees, for tests, demos and benchmarks.

Writes the on-disk format of DESIGN.md exactly as the legacy server did:
N agents with inboxes, context windows, expertise and profiles; polls with
votes in ``shared/polls.json``; sessions with roles, artifacts and reviews;
tasks of the task registry in ``shared/tasks/``.
Optionally adds one file of each malformed kind found in the wild.
"""

from __future__ import annotations

import json
import random
from datetime import datetime, timedelta, timezone
from pathlib import Path

from .entities import MESSAGES, POLLS, SESSIONS, TABLES, TASKS
from .layout import INBOX_DIR, NODE_FILE_OF, NODES_DIR, Tree, document_name

__all__ = ["generate", "MALFORMED_KINDS"]


def _in_node(*parts: str) -> str:
    """A path relative to the root, in the folder of the first agent (``nodes/agent-000/...``)."""
    return "/".join((NODES_DIR, "agent-000", *parts))


#: kind -> (relative path, bytes, a fragment of the reason the migration gives)
MALFORMED_KINDS = {
    "empty": (_in_node(INBOX_DIR, document_name("bad-empty")), b"", "empty file"),
    "truncated": (_in_node(INBOX_DIR, document_name("bad-truncated")), b'{"id": "bad-truncated", "sender": "ag',
                  "invalid JSON"),
    "not_utf8": (_in_node(INBOX_DIR, document_name("bad-latin1")),
                 '{"sender": "agent-001", "content": "caf\u00e9", "timestamp": "2024-01-01T00:00:00"}'
                 .encode("latin-1"), "not UTF-8"),
    "wrong_type": (_in_node(NODE_FILE_OF["context"]), b'["not", "an", "object"]', "must be a JSON object"),
    "missing_field": (_in_node(INBOX_DIR, document_name("bad-nosender")),
                      b'{"id": "bad-nosender", "content": "hi", "timestamp": "2024-01-01T00:00:00"}',
                      "missing required field 'sender'"),
}


def _dump(path: Path, data: object) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(json.dumps(data, ensure_ascii=False, indent=2))


def generate(root: Path, agents: int = 5, messages: int = 50, polls: int = 4, sessions: int = 3,
             malformed: bool = False, unknown_fields: bool = False, seed: int = 0,
             random_ids: bool = False, tasks: int = 3) -> dict:
    """Write a legacy tree under *root*; what it wrote.

    Message ids are ``msg-0000000``, ``msg-0000001``... or, with *random_ids*,
    32 hex digits like the uuid4 ids the federation makes (deterministic per *seed*).

    Returns ``{"rows": {table: count}, "malformed": {kind: path}, "unknown": [(path, field)]}``,
    the rows a faithful migration must produce for the valid files.
    """
    rnd = random.Random(seed)
    root = Path(root)
    tree = Tree(root)
    base = datetime(2024, 3, 1, tzinfo=timezone.utc)
    names = [f"agent-{i:03d}" for i in range(agents)]
    rows = {t.table: 0 for t in TABLES}
    unknown: list[tuple[str, str]] = []

    def stamp(seconds: float) -> str:
        return (base + timedelta(seconds=seconds)).isoformat()

    for n, name in enumerate(names):
        tree.inbox(name).mkdir(parents=True, exist_ok=True)
        if n % 7 != 6:  # some agents have no context window
            _dump(tree.context_file(name), {"agent": name, "text": f"{name} works on item {n}",
                                            "last_heartbeat": stamp(n), "updated_at": stamp(n)})
            rows["context"] += 1
        domains = sorted(rnd.sample(["python", "sql", "review", "ops", "docs", "security"], rnd.randint(0, 3)))
        if domains or n % 2:  # an empty domain list is a file without rows
            _dump(tree.expertise_file(name), {"agent": name, "domains": domains, "updated_at": stamp(n)})
            rows["expertise"] += len(domains)
        if n % 3 != 2:
            _dump(tree.profile_file(name), {"agent": name, "default_role": rnd.choice(["reviewer", "builder", None]),
                                            "traits": {"careful": bool(n % 2), "speed": n}, "updated_at": stamp(n)})
            rows["profiles"] += 1

    previous = None
    for i in range(messages):
        recipient = names[i % agents]
        mid = f"{rnd.getrandbits(128):032x}" if random_ids else f"msg-{i:07d}"
        msg = {"id": mid, "sender": names[(i * 7 + 1) % agents], "recipient": recipient,
               "content": f"message {i}: please look at item {rnd.randint(0, 10**6)}",
               "message_type": rnd.choice([MESSAGES.default("message_type"), "question", "info"]),
               "reply_to": previous if i % 5 == 0 else None, "timestamp": stamp(1000 + i)}
        previous = mid
        if i % 11 == 3:
            del msg["id"]  # legacy files without "id": the file name is the id
        path = tree.message_file(recipient, mid)
        if unknown_fields and i == 1:
            msg["priority"] = "high"
            unknown.append((str(path), "priority"))
        _dump(path, msg)
        rows["messages"] += 1

    for folder in (tree.sessions_dir, tree.tasks_dir):
        folder.mkdir(parents=True, exist_ok=True)
    doc = {}
    for p in range(polls):
        pid = f"poll-{p:04d}"
        options = [f"option-{k}" for k in range(rnd.randint(2, 4))]
        voters = rnd.sample(names, rnd.randint(0, agents))
        doc[pid] = {"id": pid, "question": f"Question {p}?", "options": options,
                    "status": "closed" if p % 4 == 3 else POLLS.default("status"), "creator": names[p % agents],
                    "created_at": stamp(p), "votes": {v: rnd.choice(options) for v in voters}}
        rows["polls"] += 1
        rows["votes"] += len(voters)
    if unknown_fields and doc:
        first = next(iter(doc))
        doc[first]["color"] = "blue"
        unknown.append((str(tree.polls_file), f"{first}.color"))
    if polls:
        _dump(tree.polls_file, doc)

    for s in range(sessions):
        sid = f"session-{s:04d}"
        members = rnd.sample(names, min(agents, 3))
        artifacts = {f"doc-{k}": {"path": f"docs/{sid}-{k}.md", "attached_at": stamp(s + k)}
                     for k in range(rnd.randint(0, 2))}
        reviews = {atype: {members[-1]: {"status": "approved", "comments": "ok" if s % 2 else None,
                                         "reviewed_at": stamp(s + 5)}} for atype in artifacts}
        session = {"id": sid, "title": f"Session {s}", "description": None if s % 2 else f"about {s}",
                   "lead": members[0], "phase": rnd.choice([SESSIONS.default("phase"), "executing", "review"]),
                   "created_at": stamp(s), "updated_at": stamp(s + 9),
                   "roles": {m: {"role": "reviewer", "subtask": f"part {k}", "assigned_at": stamp(s + 1)}
                             for k, m in enumerate(members[1:])},
                   "artifacts": artifacts, "reviews": reviews}
        _dump(tree.session_file(sid), session)
        rows["sessions"] += 1
        rows["session_roles"] += len(session["roles"])
        rows["session_artifacts"] += len(artifacts)
        rows["session_reviews"] += sum(len(r) for r in reviews.values())

    for k in range(tasks):  # open, claimed (its lease long over), done; each after the one before
        tid = f"task-{k:04d}"
        status = ("open", "claimed", "done")[k % 3]
        task = {f: None for f in TASKS.columns}
        task.update(id=tid, title=f"Task {k}", creator=names[k % agents] if names else "agent-000",
                    depends_on=[f"task-{k - 1:04d}"] if k else [], status=status, attempt=0 if k % 3 == 0 else 1,
                    payload={"item": k}, created_at=stamp(k), updated_at=stamp(k + 1))
        if status != "open":
            task.update(claimed_by=names[(k + 1) % agents] if names else "agent-001", lease_until=stamp(k + 2))
        if status == "done":
            task.update(result=f"finished {k}", lease_until=None)
        _dump(tree.task_file(tid), task)
        rows["tasks"] += 1

    bad: dict[str, str] = {}
    if malformed:
        for kind, (rel, payload, _reason) in MALFORMED_KINDS.items():
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            if kind == "wrong_type" and path.exists():
                rows["context"] -= 1  # replaces a valid context file
            path.write_bytes(payload)
            bad[kind] = str(path)
    return {"rows": rows, "malformed": bad, "unknown": unknown}
