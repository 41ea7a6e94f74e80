"""The legacy on-disk layout: which file or folder under the federation root holds which document.

The one module that spells it (DESIGN.md "Legacy on-disk format"; docs/delivery.md for leased/,
dead/ and sent_keys/)::

    nodes/{agent}/inbox/{message_id}.json     message      an unread message
    nodes/{agent}/leased/{message_id}.json    message      received, not yet acknowledged
    nodes/{agent}/leased/.leases.json         (journal)    the leases taken: {id: [attempt, lease_until]}
    nodes/{agent}/dead/{message_id}.json      message      delivered the maximum attempts, never acknowledged
    nodes/{sender}/sent_keys/{sha256}.json    (keys)       an idempotent send's key: bookkeeping, no rows
    nodes/{agent}/inbox.json                  message_list an inbox as one list file (federation.adopt's
                                                           shape="list"): its unread messages
    nodes/{agent}/context_window.json         context
    nodes/{agent}/expertise.json              expertise
    nodes/{agent}/profile.json                profile
    shared/polls.json                         polls        every poll, its votes nested
    shared/sessions/{session_id}.json         session      its roles, artifacts and reviews nested
    shared/tasks/{task_id}.json               task         one task of the task registry
    .locks/{name}.lock                        (locks)      advisory locks, not data

Names: an agent name or an id becomes one path component only once validated
(:func:`validate.agent`, :func:`validate.ident`); a name starting with ``.`` is
a temp file of an atomic write (or the journal), never a document.

Paths only: reading what is found there is :mod:`federation.stores.files`' job
(walks from the root, no link followed, size and depth bounds), and
:mod:`federation.transfer.rows`' for the whole tree.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from . import validate as _validate

__all__ = ["Tree", "NODES_DIR", "SHARED_DIR", "INBOX_DIR", "LEASED_DIR", "DEAD_DIR", "SENT_KEYS_DIR", "LEASES_FILE",
           "SESSIONS_DIR", "POLLS_FILE", "NODE_FILES", "NODE_FILE_OF", "LOCK_DIR", "TOP_DIRS", "MESSAGE_DIRS",
           "AGENT_ENTRIES", "document_name", "stem", "is_document_name", "classify", "document_file",
           "message_owner", "message_folder", "leases_journal", "received_copy", "TASKS_DIR", "FOLDER_DOCUMENTS",
           "FOLDER_OF"]

NODES_DIR = "nodes"
#: a per-agent list-file inbox, nodes/{agent}/inbox.json (a JSON list of messages; a read one marked
#: ``"read": true`` or with a ``read_at``): the shape federation.adopt declares as ``shape="list"``
LIST_INBOX = "inbox.json"
MESSAGE_LIST = "message_list"  #: its kind among the legacy files (its rows are messages)
SHARED_DIR = "shared"
INBOX_DIR = "inbox"
LEASED_DIR = "leased"
DEAD_DIR = "dead"
SENT_KEYS_DIR = "sent_keys"
LEASES_FILE = ".leases.json"
SESSIONS_DIR = "sessions"
TASKS_DIR = "tasks"
#: the folders of shared/ that hold one document per record, and the document kind of each
FOLDER_DOCUMENTS = {SESSIONS_DIR: "session", TASKS_DIR: "task"}
FOLDER_OF = {kind: folder for folder, kind in FOLDER_DOCUMENTS.items()}
POLLS_FILE = "polls.json"
#: the per-agent files of nodes/{agent}/, and the document each holds
NODE_FILES = {"context_window.json": "context", "expertise.json": "expertise", "profile.json": "profile"}
NODE_FILE_OF = {kind: name for name, kind in NODE_FILES.items()}
LOCK_DIR = ".locks"

#: the folders under the root that hold the legacy state (what ``archive-legacy`` archives)
TOP_DIRS = (NODES_DIR, SHARED_DIR)
#: the folders of an agent that hold its messages: unread, leased, dead
MESSAGE_DIRS = (INBOX_DIR, LEASED_DIR, DEAD_DIR)
#: the entries that make a folder under nodes/ an agent's (``load_agents``)
AGENT_ENTRIES = frozenset((*NODE_FILES, INBOX_DIR))

_SUFFIX = ".json"


def document_name(doc_id: str) -> str:
    """The file name of the document *doc_id* (a message, a session): ``{doc_id}.json``."""
    return f"{doc_id}{_SUFFIX}"


def stem(name: str) -> str:
    """The id a document's file name holds (``msg-1.json`` → ``msg-1``)."""
    return name[:-len(_SUFFIX)]


def is_document_name(name: str) -> bool:
    """Whether a name listed in a folder of documents is one (not a temp file, the journal or another file)."""
    return name.endswith(_SUFFIX) and not name.startswith(".")


class Tree:
    """Paths of the legacy layout under one federation root.

    Per-agent and per-id paths are cached: pathlib joins cost microseconds,
    which a hot read path pays on every call.
    """

    def __init__(self, root: Path):
        self.root = Path(root)
        self._paths: dict[tuple[str, str], Path] = {}

    def _cached(self, kind: str, name: str, build) -> Path:
        key = (kind, name)
        path = self._paths.get(key)
        if path is None:
            path = build()
            if len(self._paths) > 65536:
                self._paths.clear()
            self._paths[key] = path
        return path

    @property
    def nodes(self) -> Path:
        return self.root / NODES_DIR

    @property
    def shared(self) -> Path:
        return self.root / SHARED_DIR

    @property
    def polls_file(self) -> Path:
        return self._cached("polls", "", lambda: self.shared / POLLS_FILE)

    @property
    def sessions_dir(self) -> Path:
        return self.shared / SESSIONS_DIR

    def node(self, agent: str) -> Path:
        return self._cached("node", agent, lambda: self.nodes / _validate.agent(agent))

    def inbox(self, agent: str) -> Path:
        return self._cached("inbox", agent, lambda: self.node(agent) / INBOX_DIR)

    def leased(self, agent: str) -> Path:
        return self._cached("leased", agent, lambda: self.node(agent) / LEASED_DIR)

    def dead(self, agent: str) -> Path:
        return self._cached("dead", agent, lambda: self.node(agent) / DEAD_DIR)

    def leases_file(self, agent: str) -> Path:
        """The journal of *agent*'s leases."""
        return self.leased(agent) / LEASES_FILE

    def sent_keys(self, agent: str, *, listed: bool = False) -> Path:
        """The folder of *agent*'s idempotency keys.  *listed*: a name read from a listing of nodes/
        (only looked into, never written): taken as it is found."""
        return (self.nodes / agent if listed else self.node(agent)) / SENT_KEYS_DIR

    def key_file(self, sender: str, key: str) -> Path:
        # the key is the sender's text: hashed, never a path of its own
        return self.sent_keys(sender) / document_name(hashlib.sha256(key.encode("utf-8")).hexdigest())

    def message_file(self, agent: str, message_id: str) -> Path:
        return self.inbox(agent) / document_name(_validate.ident(message_id, "message id"))

    def message_file_in(self, folder: str, agent: str, message_id: str) -> Path:
        """The file of message *message_id* in *agent*'s message *folder* (:data:`MESSAGE_DIRS`)."""
        return self.node(agent) / folder / document_name(_validate.ident(message_id, "message id"))

    def node_file(self, kind: str, agent: str) -> Path:
        """The file of *agent*'s node document *kind* (``context``, ``expertise``, ``profile``)."""
        return self._cached(kind, agent, lambda: self.node(agent) / NODE_FILE_OF[kind])

    def context_file(self, agent: str) -> Path:
        return self.node_file("context", agent)

    def expertise_file(self, agent: str) -> Path:
        return self.node_file("expertise", agent)

    def profile_file(self, agent: str) -> Path:
        return self.node_file("profile", agent)

    def session_file(self, session_id: str) -> Path:
        return self.sessions_dir / document_name(_validate.ident(session_id, "session id"))

    def folder(self, kind: str) -> Path:
        """The folder of shared/ holding the documents of *kind* (:data:`FOLDER_DOCUMENTS`)."""
        return self.shared / FOLDER_OF[kind]

    def folder_file(self, kind: str, doc_id: str) -> Path:
        """The file of document *doc_id* of *kind* in its folder of shared/."""
        return self.folder(kind) / document_name(_validate.ident(doc_id, f"{kind} id"))

    @property
    def tasks_dir(self) -> Path:
        return self.shared / TASKS_DIR

    def task_file(self, task_id: str) -> Path:
        return self.folder_file("task", task_id)

    def lock_path(self, name: str) -> Path:
        return self.root / LOCK_DIR / f"{name}.lock"


def document_file(tree: Tree, kind: str, doc_id: str, owner: str) -> Path:
    """Where the legacy layout keeps document *kind* ``doc_id`` of *owner* (polls: the shared polls.json)."""
    if kind == "message":
        return tree.message_file(owner, doc_id)
    if kind == "polls":
        return tree.polls_file
    if kind in FOLDER_OF:
        return tree.folder_file(kind, doc_id)
    return tree.node(doc_id) / NODE_FILE_OF[kind]


def classify(parts: list[str]) -> tuple[str, str, str] | None:
    """``(kind, owner, stem)`` of the file at *parts* below the root (the way back from a path to its
    document), or None when the layout defines no document there.  Names are not validated here.

    owner: the agent (node files, messages) or the session id; stem: the message or session id.
    """
    name = parts[-1]
    doc_stem = stem(name) if name.endswith(_SUFFIX) else ""
    if len(parts) == 4 and parts[0] == NODES_DIR and parts[2] in MESSAGE_DIRS and doc_stem:
        return "message", parts[1], doc_stem
    if len(parts) == 3 and parts[0] == NODES_DIR and name in NODE_FILES:
        return NODE_FILES[name], parts[1], doc_stem
    if len(parts) == 3 and parts[0] == NODES_DIR and name == LIST_INBOX:
        return MESSAGE_LIST, parts[1], doc_stem
    if len(parts) == 2 and parts[0] == SHARED_DIR and name == POLLS_FILE:
        return "polls", "", "polls"
    if len(parts) == 3 and parts[0] == SHARED_DIR and parts[1] in FOLDER_DOCUMENTS and doc_stem:
        return FOLDER_DOCUMENTS[parts[1]], doc_stem, doc_stem
    return None


def message_owner(path: str) -> str:
    """The agent whose folder holds the message file *path* (``nodes/{agent}/inbox/{id}.json``)."""
    return os.path.basename(os.path.dirname(os.path.dirname(path)))


def message_folder(path: str) -> str:
    """Which of the agent's message folders (:data:`MESSAGE_DIRS`) holds the message file *path*."""
    return os.path.basename(os.path.dirname(path))


def leases_journal(path: str) -> Path:
    """The lease journal of the leased/ folder holding the message file *path*."""
    return Path(os.path.dirname(path)) / LEASES_FILE


def received_copy(path: str, inbox_file: Path) -> bool:
    """Whether *path* is the leased/ or dead/ file of the message whose inbox file is *inbox_file*
    (the same agent's folder): a message received and not acknowledged."""
    found = Path(path)
    return found.parent.name in (LEASED_DIR, DEAD_DIR) and found.parent.parent == inbox_file.parent.parent
