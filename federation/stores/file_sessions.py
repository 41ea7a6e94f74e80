"""Sessions on the legacy file tree: one document per session, ``shared/sessions/{id}.json``, its roles,
artifacts and reviews nested inside.

The bodies of :mod:`federation.core`'s session functions (``core`` binds them to its tree; the shim wraps
``core``'s names).  A change of a session reads, changes and writes back its document under the session's
lock (``entities.session_lock``), which the shim also holds across both sides of a dual-phase session write.
"""

from __future__ import annotations

import copy
from typing import Callable

from ..domain.entities import SESSIONS, TABLES, session_lock
from ..domain.layout import is_document_name, stem
from ..errors import ConflictError, NotFoundError
from .file_reads import by_creation, listed, page
from .files import Tree, atomic_write_json, entry_kind, locked, read_json

__all__ = ["load_session", "load_sessions", "save_session", "save_role", "save_artifact", "save_review",
           "save_session_phase", "load_sessions_page", "load_roles"]

_SESSION_PARTS = tuple(e for e in TABLES if e.parent == SESSIONS.table)


def _normal_session(session_id: str, data: dict) -> dict:
    session = SESSIONS.record(data, fallback={"id": session_id})
    # the nested records, keyed as in the file (a copy two levels deep: reviews nest by type, then reviewer)
    for entity in _SESSION_PARTS:
        session[entity.container] = {k: dict(v) if entity.key > 2 else v
                                     for k, v in (data.get(entity.container) or {}).items()}
    return session


def load_session(t: Tree, session_id: str) -> dict | None:
    data = read_json(t.session_file(session_id), root=t.root)
    return None if data is None else _normal_session(session_id, data)


def load_sessions(t: Tree) -> dict[str, dict]:
    """Every session, keyed by id."""
    directory = t.sessions_dir
    out = {}
    for name in sorted(listed(t, directory)):
        if is_document_name(name):
            sid = stem(name)
            data = read_json(directory / name, root=t.root)
            if data is not None:
                out[sid] = _normal_session(sid, data)
    return out


def save_session(t: Tree, session: dict) -> None:
    """Create a session; one with the same id is a conflict."""
    sid = session["id"]
    with locked(t, session_lock(sid)):
        if entry_kind(t.session_file(sid), root=t.root) is not None:
            raise ConflictError(f"session {sid} already exists")
        atomic_write_json(t.session_file(sid), copy.deepcopy(session), root=t.root)


def _update_session(t: Tree, session_id: str, change: Callable[[dict], None], updated_at: str) -> None:
    with locked(t, session_lock(session_id)):
        path = t.session_file(session_id)
        data = read_json(path, root=t.root)
        if data is None:
            raise NotFoundError(f"session {session_id} does not exist")
        session = _normal_session(session_id, data)
        change(session)
        session["updated_at"] = updated_at
        atomic_write_json(path, session, root=t.root)


def save_role(t: Tree, session_id: str, agent: str, role: str, subtask: str | None, assigned_at: str) -> None:
    def change(s: dict) -> None:
        s["roles"][agent] = {"role": role, "subtask": subtask, "assigned_at": assigned_at}

    _update_session(t, session_id, change, assigned_at)


def save_artifact(t: Tree, session_id: str, artifact_type: str, path: str, attached_at: str) -> None:
    def change(s: dict) -> None:
        s["artifacts"][artifact_type] = {"path": path, "attached_at": attached_at}

    _update_session(t, session_id, change, attached_at)


def save_review(t: Tree, session_id: str, artifact_type: str, reviewer: str, status: str, comments: str | None,
                reviewed_at: str) -> None:
    def change(s: dict) -> None:
        if artifact_type not in s["artifacts"]:
            raise NotFoundError(f"session {session_id} has no artifact of type {artifact_type!r}")
        s["reviews"].setdefault(artifact_type, {})[reviewer] = {
            "status": status,
            "comments": comments,
            "reviewed_at": reviewed_at,
        }

    _update_session(t, session_id, change, reviewed_at)


def save_session_phase(t: Tree, session_id: str, phase: str, updated_at: str) -> None:
    def change(s: dict) -> None:
        s["phase"] = phase

    _update_session(t, session_id, change, updated_at)


def load_sessions_page(t: Tree, limit: int | None = None, after: str | None = None) -> list[dict]:
    """Sessions oldest first, after the session *after*, at most *limit*."""
    return page(sorted(load_sessions(t).values(), key=by_creation), limit, after, "session")


def load_roles(t: Tree, agent: str) -> list[dict]:
    """*agent*'s roles: ``{"session_id","title","role","subtask"}``, sessions oldest first."""
    out = []
    for s in sorted(load_sessions(t).values(), key=by_creation):
        role = s["roles"].get(agent)
        if isinstance(role, dict):
            out.append({"session_id": s["id"], "title": s["title"], "role": role.get("role"),
                        "subtask": role.get("subtask")})
    return out
