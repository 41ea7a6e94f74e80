"""Comparing a record as the files hold it with the same record as the database holds it.

JSON gives lists where SQL gives tuples, ``None`` where the other side has
no key, JSON text where the other has a dict; columns that only one side has
are named by the caller and ignored.  One comparison for the consistency
report and for the shim's shadow reads (:func:`record_diff` is the differ
``_wiring`` and ``adopt`` give it), so both agree on what differs.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["normalize", "field_diff", "record_diff"]


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


def record_diff(a: Any, b: Any, ignore: frozenset[str] = frozenset()) -> list[tuple[str, Any, Any]]:
    """The fields where records *a* and *b* differ once normalised (*ignore*: fields left out); [] when equal.

    The shim's differ (``shim.install(..., differ=record_diff)``): shadow reads report the same field
    paths and values as the consistency report.
    """
    x, y = normalize(a, ignore), normalize(b, ignore)
    return [] if x == y else field_diff(x, y)  # most records of a list agree: no walk for them


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


_MISSING = _Missing()


def _show(value: Any) -> Any:
    if value is _MISSING:
        return "<missing>"
    text = json.dumps(value, ensure_ascii=False, default=str)
    return value if len(text) <= 120 else text[:117] + "..."
