"""Comparing and diffing the two sides of an experiment, knowing nothing of what they hold.

Records are compared by a *differ*: the caller's (``shim.install(..., differ=...)``), which knows how
its two stores represent the same record, or :func:`whole_record_diff`, plain equality.  Whole
documents are saved as a :func:`delta` applied with :func:`patch`.
"""

from __future__ import annotations

import copy
from typing import Any, Callable, Iterable

__all__ = ["Differ", "whole_record_diff", "split_records", "delta", "patch", "DELETED"]


#: A differ compares one record of each side: ``differ(control, candidate, ignore)`` -> the
#: ``(path, control_value, candidate_value)`` triples where they differ, ``[]`` when they agree.
Differ = Callable[[Any, Any, frozenset[str]], list[tuple[str, Any, Any]]]

#: How long a value shown in a difference may be (as ``repr``) before it is cut.
SHOW_LIMIT = 120


def whole_record_diff(a: Any, b: Any, ignore: frozenset[str] = frozenset()) -> list[tuple[str, Any, Any]]:
    """The shim's own differ: the records are equal or not, once the *ignore* keys of a dict are dropped.

    One ``"(value)"`` difference when they are not; a caller that knows its data (JSON text beside
    structures, field-level paths) passes its own differ to :func:`shim.install`.
    """
    x, y = _without(a, ignore), _without(b, ignore)
    return [] if x == y else [("(value)", _show(x), _show(y))]


def _without(value: Any, ignore: frozenset[str]) -> Any:
    if ignore and isinstance(value, dict):
        return {k: v for k, v in value.items() if k not in ignore}
    return value


def _show(value: Any) -> Any:
    text = repr(value)
    return value if len(text) <= SHOW_LIMIT else text[:SHOW_LIMIT - 3] + "..."


def split_records(value: Any, how: str | None, key: str | None) -> dict[str, Any]:
    """Split a function's result into records keyed for mismatch events."""
    if how == "dict" and isinstance(value, dict):
        return {str(k): v for k, v in value.items()}
    if how and how != "dict" and isinstance(value, (list, tuple)):
        return {str(r.get(how)) if isinstance(r, dict) else repr(r): r for r in value}
    return {key or "": value}


class _Deleted:
    def __repr__(self) -> str:
        return "<deleted>"


DELETED = _Deleted()


def delta(base: Any, new: Any, path: tuple = ()) -> list[tuple[tuple, Any]]:
    """The changes that turn *base* into *new*: ``[(path, value or DELETED)]``.

    Dicts are compared key by key; anything else (lists included) is a value.
    """
    if isinstance(base, dict) and isinstance(new, dict):
        out: list[tuple[tuple, Any]] = []
        for k in base:
            if k not in new:
                out.append((path + (k,), DELETED))
        for k, v in new.items():
            if k not in base:
                out.append((path + (k,), copy.deepcopy(v)))
                continue
            old = base[k]
            if old == v and type(old) is type(v):
                continue  # equal, compared in C: an unchanged poll is not walked field by field
            out.extend(delta(old, v, path + (k,)))
        return out
    if base == new and type(base) is type(new):
        return []
    return [(path, copy.deepcopy(new))]


def patch(doc: Any, changes: Iterable[tuple[tuple, Any]], *, in_place: bool = False) -> Any:
    """A copy of *doc* with *changes* (from :func:`delta`) applied (*in_place*: *doc* itself, changed:
    for a document just read, which no one else holds, a copy is wasted work)."""
    out = doc if in_place else copy.deepcopy(doc)
    for path, value in changes:
        if not path:
            out = copy.deepcopy(value)
            continue
        node = out
        for k in path[:-1]:
            nxt = node.get(k) if isinstance(node, dict) else None
            if not isinstance(nxt, dict):
                if value is DELETED:
                    node = None
                    break
                nxt = node[k] = {}
            node = nxt
        if node is None:
            continue
        if value is DELETED:
            node.pop(path[-1], None)
        else:
            node[path[-1]] = copy.deepcopy(value)
    return out
