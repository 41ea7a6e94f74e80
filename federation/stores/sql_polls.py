"""The SQL store's polls and votes."""

from __future__ import annotations

import json

from . import sqltext as _sql
from .database import Tx
from ..domain.entities import POLLS, VOTES, check_close, check_vote
from ..errors import ConflictError
from .sql_base import SqlPart

__all__ = ["PollsSql"]


class PollsSql(SqlPart):
    """Polls with their votes; a vote is one statement."""

    # -- polls ----------------------------------------------------------------
    @staticmethod
    def _poll(row: tuple, votes: dict[str, str]) -> dict:
        return {**POLLS.from_row(row), "votes": votes}

    def load_polls(self) -> dict[str, dict]:
        def fn(tx: Tx) -> dict[str, dict]:
            polls = tx.fetchall(_sql.select(POLLS) + " ORDER BY id")
            votes: dict[str, dict[str, str]] = {}
            for pid, voter, option in tx.fetchall(_sql.select(VOTES)):
                votes.setdefault(pid, {})[voter] = option
            return {r[0]: self._poll(r, votes.get(r[0], {})) for r in polls}

        return self.db.read(fn)

    def load_poll(self, poll_id: str) -> dict | None:
        def fn(tx: Tx) -> dict | None:
            row = tx.fetchone(_sql.select(POLLS, "id = ?"), (poll_id,))
            if row is None:
                return None
            votes = dict(tx.fetchall("SELECT voter, option FROM votes WHERE poll_id = ?", (poll_id,)))
            return self._poll(row, votes)

        return self.db.read(fn)

    def _write_poll(self, tx: Tx, poll: dict, *, create: bool) -> None:
        votes = dict(poll.get("votes") or {})
        if create:
            self._insert_new(tx, POLLS, poll, "poll")
            stored: dict[str, str] = {}
        else:
            tx.execute(_sql.upsert(POLLS), POLLS.row_of(poll))
            stored = dict(tx.fetchall("SELECT voter, option FROM votes WHERE poll_id = ?", (poll["id"],)))
            gone = [(poll["id"], voter) for voter in stored if voter not in votes]
            if gone:
                tx.executemany("DELETE FROM votes WHERE poll_id = ? AND voter = ?", gone)
        changed = [(poll["id"], voter, option, poll.get("created_at"))
                   for voter, option in votes.items() if stored.get(voter) != option]
        if changed:
            tx.executemany("INSERT INTO votes (poll_id, voter, option, voted_at) VALUES (?, ?, ?, ?) "
                           "ON CONFLICT (poll_id, voter) DO UPDATE SET option = excluded.option", changed)

    def save_poll(self, poll: dict) -> None:
        self.db.write(lambda tx: self._write_poll(tx, poll, create=True))

    def save_polls(self, polls: dict[str, dict]) -> None:
        """Make the stored polls equal *polls*: the whole document, as the file side writes it.

        Through the shim, *polls* is the current state with this caller's delta
        applied, inside one transaction, so only what changed is written.
        """
        def fn(tx: Tx) -> None:
            existing = {r[0] for r in tx.fetchall("SELECT id FROM polls")}
            for poll_id in existing - set(polls):
                tx.execute("DELETE FROM votes WHERE poll_id = ?", (poll_id,))
                tx.execute("DELETE FROM polls WHERE id = ?", (poll_id,))
            for poll in polls.values():
                self._write_poll(tx, poll, create=False)

        self.db.write(fn)

    def save_vote(self, poll_id: str, voter: str, option: str, voted_at: str) -> None:
        """One statement (one round trip on PostgreSQL): the upsert happens only if the poll is open
        and the option valid; the poll row is locked FOR SHARE, so a close waits for the vote or the
        vote sees the close.  Why a vote was refused is looked up only when it was."""
        dialect = self.db.dialect
        sql = ("INSERT INTO votes (poll_id, voter, option, voted_at) SELECT id, ?, ?, ? FROM polls "
               "WHERE id = ? AND COALESCE(status, 'open') = 'open' AND "
               f"{dialect.json_array_has.format(options='polls.options')}{dialect.for_share} "
               "ON CONFLICT (poll_id, voter) DO UPDATE SET option = excluded.option, voted_at = excluded.voted_at "
               "RETURNING poll_id")
        landed = self.db.write_statement(
            lambda tx: tx.fetchall(sql, (voter, option, voted_at, poll_id, option)))  # an upsert: safe to rerun
        if landed:
            return
        row = self.db.fetchone("SELECT status, options FROM polls WHERE id = ?", (poll_id,))
        poll = None if row is None else {"status": row[0], "options": json.loads(row[1])}
        check_vote(poll, poll_id, option)
        raise ConflictError(f"the vote on poll {poll_id} was not recorded; try again")

    def save_poll_status(self, poll_id: str, agent: str, status: str) -> None:
        def fn(tx: Tx) -> None:
            row = tx.fetchone(f"SELECT creator, status FROM polls WHERE id = ?{tx.dialect.for_update}", (poll_id,))
            poll = None if row is None else {"creator": row[0], "status": row[1]}
            if check_close(poll, poll_id, agent):
                tx.execute("UPDATE polls SET status = ? WHERE id = ?", (status, poll_id))

        self.db.write(fn)

    # -- what an agent reads every tick (issue 11): indexed, cost proportional to the answer ---------
    _POLL_COLS = _sql.columns(POLLS)

    def _polls_with_votes(self, tx: Tx, rows: list[tuple]) -> list[dict]:
        votes: dict[str, dict[str, str]] = {}
        ids = [r[0] for r in rows]
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            marks = ", ".join("?" for _ in chunk)
            for pid, voter, option in tx.fetchall(
                    f"SELECT poll_id, voter, option FROM votes WHERE poll_id IN ({marks})", chunk):
                votes.setdefault(pid, {})[voter] = option
        return [self._poll(r, votes.get(r[0], {})) for r in rows]

    def load_polls_page(self, status: str | None = None, limit: int | None = None,
                        after: str | None = None) -> list[dict]:
        def fn(tx: Tx) -> list[dict]:
            where, params = [], []
            if status is not None:
                where.append("status = ?")
                params.append(status)
            position = self._position(tx, "polls", after, "poll")
            if position is not None:
                where.append("(created_at, id) > (?, ?)")
                params += position
            sql = f"SELECT {self._POLL_COLS} FROM polls"
            if where:
                sql += " WHERE " + " AND ".join(where)
            sql += " ORDER BY created_at, id"
            if limit is not None:
                sql += " LIMIT ?"
                params.append(limit)
            return self._polls_with_votes(tx, tx.fetchall(sql, params))

        return self.db.read(fn)

    def load_open_polls(self, agent: str, limit: int) -> list[dict]:
        def fn(tx: Tx) -> list[dict]:
            rows = tx.fetchall(
                f"SELECT {self._POLL_COLS} FROM polls p WHERE status = 'open' AND NOT EXISTS "
                "(SELECT 1 FROM votes v WHERE v.poll_id = p.id AND v.voter = ?) ORDER BY created_at, id LIMIT ?",
                (agent, limit))
            return self._polls_with_votes(tx, rows)

        return self.db.read(fn)
