"""The entity descriptions against the schema and the two stores."""

from __future__ import annotations

import pytest

from federation.stores import sqltext as _sql, schema
from federation.domain.entities import ALL, MESSAGES, POLLS, PROFILES, SESSIONS, InvalidRecord


def test_every_described_table_and_column_is_in_the_schema(fed):
    """The descriptions name exactly the schema's tables, and every column they name exists (both engines)."""
    assert {e.table for e in ALL} == set(schema.TABLES)
    store = fed.store()
    for entity in ALL:
        extra = ", ".join(name for name, _ in entity.extra)
        what = _sql.columns(entity) + (f", {extra}" if extra else "")
        assert store.db.fetchall(_sql.select(entity, "1 = 0", what)) == []


def test_defaults_apply_where_a_legacy_record_lacks_the_field():
    """Missing, null or empty: the description's default (or the record's place) stands in."""
    msg = MESSAGES.record({"sender": "a", "content": "c", "timestamp": "t", "message_type": None},
                          fallback={"id": "m1", "recipient": "bob"})
    assert msg == {"id": "m1", "sender": "a", "recipient": "bob", "content": "c", "message_type": "task",
                   "reply_to": None, "timestamp": "t"}
    assert POLLS.record({"status": ""})["status"] == "open"
    assert SESSIONS.record({})["phase"] == "planning"
    assert PROFILES.record({"traits": ["not", "a", "dict"]}, given={"agent": "a"})["traits"] == {}
    row = MESSAGES.read({"sender": "a", "content": "c", "timestamp": "t"}, fallback={"id": "m1", "recipient": "b"})
    assert MESSAGES.from_row(row) == {**msg, "recipient": "b"}


@pytest.mark.parametrize("data, reason", [
    ({"content": "c", "timestamp": "t"}, "missing required field 'sender'"),
    ({"sender": 1, "content": "c", "timestamp": "t"}, "field 'sender' must be a string, found int"),
])
def test_a_strict_read_names_the_field_at_fault(data, reason):
    """The migration's reader refuses a record with a missing required field or a value of the wrong type."""
    with pytest.raises(InvalidRecord, match=reason):
        MESSAGES.read(data, fallback={"id": "m1", "recipient": "b"})
