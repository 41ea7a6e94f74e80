"""Normalising, comparing and diffing the two sides of an experiment.

JSON gives lists where SQL gives tuples, ``None`` where the other side has
no key, JSON text where the other has a dict; columns that only one side has
are named by the caller and ignored.
"""

from __future__ import annotations

import copy
import json
from typing import Any, Iterable

__all__ = ["normalize", "field_diff", "split_records", "delta", "patch", "DELETED"]


def normalize(value: Any, ignore: frozenset[str] = frozenset()) -> Any:
    if isinstance(value, dict):
        return {str(k): normalize(v, ignore) for k, v in value.items() if v is not None and k not in ignore}
    if isinstance(value, (list, tuple)):
        return [normalize(v, ignore) for v in value]
    if isinstance(value, str) and value[:1] in ("{", "["):
        try:
            parsed = json.loads(value)
        except ValueError:
            return value
        if isinstance(parsed, (dict, list)):
            return normalize(parsed, ignore)
    return value


def field_diff(a: Any, b: Any, limit: int = 5, path: str = "") -> list[tuple[str, Any, Any]]:
    """Up to *limit* ``(path, a_value, b_value)`` triples where *a* and *b* differ."""
    out: list[tuple[str, Any, Any]] = []

    def walk(x: Any, y: Any, where: str) -> None:
        if len(out) >= limit:
            return
        if isinstance(x, dict) and isinstance(y, dict):
            for k in sorted(set(x) | set(y), key=str):
                walk(x.get(k, _MISSING), y.get(k, _MISSING), f"{where}.{k}" if where else str(k))
            return
        if x != y:
            out.append((where or "(value)", _show(x), _show(y)))

    walk(a, b, path)
    return out


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


_MISSING = _Missing()


def _show(value: Any) -> Any:
    if value is _MISSING:
        return "<missing>"
    text = json.dumps(value, ensure_ascii=False, default=str)
    return value if len(text) <= 120 else text[:117] + "..."


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
            else:
                out.extend(delta(base[k], v, path + (k,)))
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
