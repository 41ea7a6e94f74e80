"""The entity descriptions against the schema and the two stores."""

from __future__ import annotations

import inspect

import pytest

from federation import _sql, core, schema
from federation.entities import ALL, MESSAGES, POLLS, PROFILES, SESSIONS, InvalidRecord
from federation.sqlstore import SqlStore


def signature_mismatches(module, store_class, names) -> list[str]:
    """Each of *names* that *store_class* lacks, or has with another signature than *module*'s function."""
    out = []
    for name in names:
        method = getattr(store_class, name, None)
        if method is None:
            out.append(f"{name}: missing on {store_class.__name__}")
            continue
        want = inspect.signature(getattr(module, name))
        have = inspect.signature(method)
        have = have.replace(parameters=list(have.parameters.values())[1:])  # without self
        if have != want:
            out.append(f"{name}: {store_class.__name__}{have} != {module.__name__}{want}")
    return out


def test_the_sql_store_has_every_shim_function_of_core_with_the_same_signature():
    """The shim routes a call to the method of the same name: same parameters, defaults, annotations."""
    assert signature_mismatches(core, SqlStore, sorted(core.SHIM_SPEC)) == []


def test_a_signature_mismatch_is_found():
    """The check fails on a missing method, a renamed parameter and a changed default."""

    class Store:
        def load_inbox(self, who: str) -> list[dict]: ...
        def load_history(self, agent: str | None = None, limit: int = 10) -> list[dict]: ...

    found = signature_mismatches(core, Store, ["load_inbox", "load_history", "save_vote"])
    assert [f.split(":")[0] for f in found] == ["load_inbox", "load_history", "save_vote"]


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
