"""shim._compare on its own: the properties the shim relies on, for any JSON-like values."""

from __future__ import annotations

import json

from hypothesis import given, strategies as st

from shim import delta, field_diff, normalize, patch

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
