"""Comparison on its own, for any JSON-like values: the shim's document deltas, the federation's record
comparison (federation.domain.compare, which the report and the shim's shadow reads share), and the shim's
own differ, which needs no federation."""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path

import structlog
from hypothesis import given, strategies as st

import shim
from federation.domain.compare import field_diff, normalize, record_diff
from shim import delta, patch, whole_record_diff

scalars = st.none() | st.booleans() | st.integers() | st.text(max_size=8)
keys = st.text(min_size=1, max_size=4)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
    max_leaves=20,
)
documents = st.dictionaries(keys, json_values, max_size=5)


@given(documents, documents)
def test_patch_of_delta_gives_the_new_document(a, b):
    """Applying delta(a, b) to a yields b: a whole-document save writes exactly what changed."""
    assert patch(a, delta(a, b)) == b


@given(documents)
def test_delta_of_equal_documents_is_empty(a):
    """An unchanged document produces no write at all."""
    assert delta(a, json.loads(json.dumps(a))) == []


@given(documents, documents)
def test_patch_leaves_its_input_untouched(a, b):
    """patch works on a copy: the shim's remembered base is never mutated."""
    before = json.dumps(a, sort_keys=True)
    patch(a, delta(a, b))
    assert json.dumps(a, sort_keys=True) == before


@given(json_values)
def test_normalize_is_idempotent(v):
    """Normalising twice changes nothing more than normalising once."""
    assert normalize(normalize(v)) == normalize(v)


@given(documents)
def test_normalize_reads_json_text_as_its_value(d):
    """A side that stores JSON text compares equal to a side that stores the structure."""
    assert normalize(json.dumps(d)) == normalize(d)


@given(documents)
def test_normalize_drops_null_fields(d):
    """None and a missing key are the same record."""
    with_nulls = {**d, "zz_extra_null": None}
    assert normalize(with_nulls) == normalize(d)


@given(json_values, json_values)
def test_field_diff_is_empty_exactly_when_equal(a, b):
    """field_diff reports nothing exactly when the normalised values are equal."""
    x, y = normalize(a), normalize(b)
    assert (field_diff(x, y) == []) == (x == y)


@given(documents, documents)
def test_field_diff_names_fields_that_differ(a, b):
    """Each reported path is a real difference between the two documents."""
    x, y = normalize(a), normalize(b)
    for path, va, vb in field_diff(x, y):
        assert va != vb
        assert isinstance(path, str) and path


@given(json_values, json_values)
def test_record_diff_is_field_diff_of_the_normalised_records(a, b):
    """The shim's differ as the federation gives it: what the report's normalize + field_diff find."""
    x, y = normalize(a), normalize(b)
    assert record_diff(a, b) == field_diff(x, y)
    assert record_diff({"seen": 1, "v": a}, {"seen": 2, "v": a}, frozenset({"seen"})) == []


# ---------------------------------------------------------------------------
# the shim's comparison hook

REPO = Path(__file__).resolve().parent.parent


def test_whole_record_diff_drops_the_ignored_keys_and_reports_one_value():
    """The shim's own differ: equal or not, as one "(value)" difference (long values cut); no JSON knowledge."""
    assert whole_record_diff({"a": 1, "seen": 1}, {"a": 1, "seen": 2}, frozenset({"seen"})) == []
    assert whole_record_diff({"a": 1}, {"a": 2}) == [("(value)", {"a": 1}, {"a": 2})]
    assert whole_record_diff({"a": [1]}, {"a": (1,)}) != []  # a list is not a tuple: no normalising here
    assert whole_record_diff("{}", {}) != []  # nor JSON text read as its value
    [(path, _, long)] = whole_record_diff(1, "x" * 500)
    assert path == "(value)" and isinstance(long, str) and len(long) == 120 and long.endswith("...")


#: A toy store with the shim installed on it, in a process where ``federation`` cannot be imported.
NO_FEDERATION = """
import json, sys, types
sys.modules["federation"] = None  # any import of it fails
import shim, structlog
mod = types.ModuleType("toy")
mod.rows = {}
mod.load_thing = lambda key: mod.rows.get(key)
def save_thing(key, value):
    mod.rows[key] = value
mod.save_thing = save_thing
class Db:
    rows = {}
    def load_thing(self, key):
        return self.rows.get(key)
    def save_thing(self, key, value):
        self.rows[key] = value
db = Db()
shim.install(mod, candidate=lambda p: db, mode=lambda: (2, 1.0),
             spec={"load_thing": {"key": lambda k: k, "ignore": ["seen"]},
                   "save_thing": {"key": lambda k, v: k}})
mod.save_thing("a", {"n": 1, "seen": 1})
db.rows["a"] = {"n": 1, "seen": 2}  # differs only in an ignored key
with structlog.testing.capture_logs() as quiet:
    mod.load_thing("a")
db.rows["a"] = {"n": 2, "seen": 2}
with structlog.testing.capture_logs() as logs:
    mod.load_thing("a")
print(json.dumps({"quiet": quiet, "logs": logs, "federation": [m for m in sys.modules if m.startswith("federation.")]},
                 default=str))
"""


def test_the_shims_default_differ_works_with_no_federation():
    """Without federation importable, a shadow read compares with the default differ: an ignored key is no
    difference, another is one "(value)" mismatch with both records (less the ignored keys)."""
    proc = subprocess.run([sys.executable, "-c", NO_FEDERATION], capture_output=True, text=True, timeout=120,
                          cwd=str(REPO))
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["quiet"] == [] and out["federation"] == []
    [event] = out["logs"]
    assert (event["event"], event["key"], event["phase"]) == ("shadow_mismatch", "a", 2)
    assert event["diff"] == [{"field": "(value)", "files": {"n": 1}, "db": {"n": 2}}]  # shown without ignored keys


def _toy(**hooks):
    mod = types.ModuleType("toy_compared")
    mod.rows = {}
    mod.load_thing = lambda key: mod.rows.get(key)

    class Db:
        rows: dict = {}

        def load_thing(self, key):
            return self.rows.get(key)

    db = Db()
    db.rows = {}
    shim.install(mod, candidate=lambda p: db, mode=lambda: (3, 1.0), spec={"load_thing": {"key": lambda k: k}},
                 **hooks)
    return mod, db


def test_a_given_differ_is_the_one_used():
    """shim.install(..., differ=...): each record of both sides goes to it, with the spec's ignore; what it
    returns is the mismatch's diff, named by side; [] is agreement."""
    calls = []

    def differ(a, b, ignore):
        calls.append((a, b, ignore))
        return [] if str(a) == str(b) else [("text", str(a), str(b))]

    mod, db = _toy(differ=differ)
    try:
        mod.rows["k"], db.rows["k"] = 1, "1"  # unequal values this differ calls equal
        with structlog.testing.capture_logs() as agreed:
            assert mod.load_thing("k") == "1"
        db.rows["k"] = "2"
        with structlog.testing.capture_logs() as logs:
            mod.load_thing("k")
    finally:
        shim.uninstall(mod)
    assert agreed == [] and calls[0] == ("1", 1, frozenset())
    [event] = [e for e in logs if e["event"] == "shadow_mismatch"]
    assert event["diff"] == [{"field": "text", "db": "2", "files": "1"}]


def test_a_differ_that_raises_never_reaches_the_caller():
    """A differ's bug: the caller gets the authoritative value, the call counts as not compared, and it is said."""
    seen = []

    def broken(a, b, ignore):
        raise RuntimeError("differ bug")

    mod, db = _toy(differ=broken, observers=[seen.append])
    try:
        mod.rows["k"], db.rows["k"] = 1, 2
        with structlog.testing.capture_logs() as logs:
            assert mod.load_thing("k") == 2
    finally:
        shim.uninstall(mod)
    [obs] = seen
    assert not obs.compared and obs.mismatches == []
    [failed] = [e for e in logs if e["event"] == "shim_differ_failed"]
    assert failed["key"] == "k" and "RuntimeError: differ bug" in failed["error"]
