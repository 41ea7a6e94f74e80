"""The SQL store's sessions and their parts (roles, artifacts, reviews)."""

from __future__ import annotations

from . import sqltext as _sql
from .database import Tx
from ..domain.entities import SESSION_ARTIFACTS, SESSION_REVIEWS, SESSION_ROLES, SESSIONS
from ..errors import NotFoundError
from .sql_base import SqlPart

__all__ = ["SessionsSql"]


class SessionsSql(SqlPart):
    """A session is a row and the rows of its parts, read back as one nested record."""

    # -- sessions -------------------------------------------------------------
    def _sessions(self, tx: Tx, session_id: str | None) -> dict[str, dict]:
        return self._sessions_where(tx, "= ?" if session_id else None, (session_id,) if session_id else ())

    def _sessions_in(self, tx: Tx, ids: list[str]) -> dict[str, dict]:
        if not ids:
            return {}
        return self._sessions_where(tx, f"IN ({', '.join('?' for _ in ids)})", tuple(ids))

    @staticmethod
    def _sessions_where(tx: Tx, match: str | None, params: tuple) -> dict[str, dict]:
        """The sessions whose id matches *match* (``"= ?"``, ``"IN (?, ...)"``; None: all), with their parts."""
        out: dict[str, dict] = {}
        for row in tx.fetchall(_sql.select(SESSIONS, f"id {match}" if match else "") + " ORDER BY id", params):
            session = out[row[0]] = SESSIONS.from_row(row)
            for part in _SESSION_PARTS:
                session[part.container] = {}
        for part in _SESSION_PARTS:
            # a nested record: {key: {key: ... {field: value}}} under the session's part.container
            depth = part.key
            for row in tx.fetchall(_sql.select(part, f"session_id {match}" if match else ""), params):
                session = out.get(row[0])
                if session is None:
                    continue
                slot = session[part.container]
                for k in row[1:depth - 1]:
                    slot = slot.setdefault(k, {})
                slot[row[depth - 1]] = dict(zip(part.columns[depth:], row[depth:]))
        return out

    def load_sessions(self) -> dict[str, dict]:
        return self.db.read(lambda tx: self._sessions(tx, None))

    def load_session(self, session_id: str) -> dict | None:
        return self.db.read(lambda tx: self._sessions(tx, session_id).get(session_id))

    def save_session(self, session: dict) -> None:
        self.db.write(lambda tx: self._insert_new(tx, SESSIONS, session, "session"))

    def _touch_session(self, tx: Tx, session_id: str, updated_at: str) -> None:
        if not tx.fetchone(f"SELECT 1 FROM sessions WHERE id = ?{tx.dialect.for_update}", (session_id,)):
            raise NotFoundError(f"session {session_id} does not exist")
        tx.execute("UPDATE sessions SET updated_at = ? WHERE id = ?", (updated_at, session_id))

    def save_role(self, session_id: str, agent: str, role: str, subtask: str | None, assigned_at: str) -> None:
        def fn(tx: Tx) -> None:
            self._touch_session(tx, session_id, assigned_at)
            tx.execute(_sql.upsert(SESSION_ROLES), (session_id, agent, role, subtask, assigned_at))

        self.db.write(fn)

    def save_artifact(self, session_id: str, artifact_type: str, path: str, attached_at: str) -> None:
        def fn(tx: Tx) -> None:
            self._touch_session(tx, session_id, attached_at)
            tx.execute(_sql.upsert(SESSION_ARTIFACTS), (session_id, artifact_type, path, attached_at))

        self.db.write(fn)

    def save_review(self, session_id: str, artifact_type: str, reviewer: str, status: str,
                    comments: str | None, reviewed_at: str) -> None:
        def fn(tx: Tx) -> None:
            self._touch_session(tx, session_id, reviewed_at)
            if not tx.fetchone("SELECT 1 FROM session_artifacts WHERE session_id = ? AND artifact_type = ?",
                               (session_id, artifact_type)):
                raise NotFoundError(f"session {session_id} has no artifact of type {artifact_type!r}")
            tx.execute(_sql.upsert(SESSION_REVIEWS),
                       (session_id, artifact_type, reviewer, status, comments, reviewed_at))

        self.db.write(fn)

    def save_session_phase(self, session_id: str, phase: str, updated_at: str) -> None:
        def fn(tx: Tx) -> None:
            self._touch_session(tx, session_id, updated_at)
            tx.execute("UPDATE sessions SET phase = ? WHERE id = ?", (phase, session_id))

        self.db.write(fn)

    def load_sessions_page(self, limit: int | None = None, after: str | None = None) -> list[dict]:
        def fn(tx: Tx) -> list[dict]:
            params: list = []
            sql = "SELECT id FROM sessions"
            position = self._position(tx, "sessions", after, "session")
            if position is not None:
                sql += " WHERE (created_at, id) > (?, ?)"
                params += position
            sql += " ORDER BY created_at, id"
            if limit is not None:
                sql += " LIMIT ?"
                params.append(limit)
            ids = [r[0] for r in tx.fetchall(sql, params)]
            found: dict[str, dict] = {}
            for start in range(0, len(ids), 500):
                found.update(self._sessions_in(tx, ids[start:start + 500]))
            return [found[i] for i in ids if i in found]

        return self.db.read(fn)

    def load_roles(self, agent: str) -> list[dict]:
        rows = self.db.fetchall(
            "SELECT r.session_id, s.title, r.role, r.subtask FROM session_roles r "
            "JOIN sessions s ON s.id = r.session_id WHERE r.agent = ? ORDER BY s.created_at, s.id", (agent,))
        return [{"session_id": r[0], "title": r[1], "role": r[2], "subtask": r[3]} for r in rows]


_SESSION_PARTS = (SESSION_ROLES, SESSION_ARTIFACTS, SESSION_REVIEWS)
