"""Input validation shared by the domain operations and the stores."""

from __future__ import annotations

import itertools
import re
from typing import Any

from ..config import MAX_CONTENT_BYTES
from ..errors import ValidationError

_AGENT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")

MAX_SHORT_TEXT = 4096  # questions, titles, options, roles, paths...
MAX_OPTIONS = 64
MAX_DOMAINS = 256
#: the deepest JSON object a caller may store (profile traits): well inside what file readers accept
MAX_JSON_DEPTH = 64
REVIEW_STATUSES = ("approved", "changes_requested")


def agent(name: Any, what: str = "agent") -> str:
    """An agent name that is safe as a single path component."""
    if not isinstance(name, str):
        raise ValidationError(f"{what} must be a string, got {type(name).__name__}")
    if not _AGENT_RE.fullmatch(name) or ".." in name:
        raise ValidationError(
            f"{what} {name!r} is not a valid agent name: use 1-64 characters from "
            "A-Z a-z 0-9 _ . - starting with a letter or digit, without '..'"
        )
    return name


def is_agent(name: Any) -> bool:
    """Whether *name* is a valid agent name (for names found in storage, which may predate validation)."""
    return isinstance(name, str) and bool(_AGENT_RE.fullmatch(name)) and ".." not in name


def is_ident(value: Any) -> bool:
    """Whether *value* is a valid id (for names found in storage)."""
    return isinstance(value, str) and bool(_ID_RE.fullmatch(value)) and ".." not in value


def ident(value: Any, what: str) -> str:
    """A poll, session or message id (also used as a file name)."""
    if not isinstance(value, str):
        raise ValidationError(f"{what} must be a string, got {type(value).__name__}")
    if not _ID_RE.fullmatch(value) or ".." in value:
        raise ValidationError(f"{what} {value!r} is not a valid id")
    return value


def text(value: Any, what: str, *, limit: int = MAX_SHORT_TEXT, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise ValidationError(f"{what} must be a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise ValidationError(f"{what} must not be empty")
    if "\x00" in value:
        raise ValidationError(f"{what} must not contain NUL characters")
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > limit:
        raise ValidationError(f"{what} is {size} bytes; the limit is {limit} bytes")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationError(f"{what} is not valid Unicode text (lone surrogate)") from None
    return value


def content(value: Any, what: str = "content", *, allow_empty: bool = False) -> str:
    return text(value, what, limit=MAX_CONTENT_BYTES, allow_empty=allow_empty)


def optional_text(value: Any, what: str, *, limit: int = MAX_SHORT_TEXT) -> str | None:
    if value is None:
        return None
    return text(value, what, limit=limit, allow_empty=True)


def string_list(values: Any, what: str, *, limit: int, min_items: int = 0, unique: bool = True) -> list[str]:
    if isinstance(values, (str, bytes)) or not isinstance(values, (list, tuple)):
        raise ValidationError(f"{what} must be a list of strings")
    items = [text(v, f"{what} item") for v in values]
    if len(items) < min_items:
        raise ValidationError(f"{what} needs at least {min_items} items, got {len(items)}")
    if len(items) > limit:
        raise ValidationError(f"{what} has {len(items)} items; the limit is {limit}")
    if unique and len(set(items)) != len(items):
        raise ValidationError(f"{what} has duplicate items")
    return items


def json_object(value: Any, what: str) -> dict:
    import json

    if not isinstance(value, dict):
        raise ValidationError(f"{what} must be an object (dict), got {type(value).__name__}")
    try:
        encoded = json.dumps(value, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"{what} must be JSON-serialisable: {exc}") from None
    except RecursionError:
        raise ValidationError(f"{what} is nested deeper than {MAX_JSON_DEPTH} levels") from None
    if len(encoded.encode("utf-8")) > MAX_CONTENT_BYTES:
        raise ValidationError(f"{what} is larger than {MAX_CONTENT_BYTES} bytes as JSON")
    if _depth_over(encoded, MAX_JSON_DEPTH):  # the files' readers stop at 100 levels (CONTRACT "Untrusted files")
        raise ValidationError(f"{what} is nested deeper than {MAX_JSON_DEPTH} levels")
    return json.loads(encoded)


def json_value(value: Any, what: str) -> Any:
    """Any JSON value (an object, a list, text, a number, true/false or None), bounded as :func:`json_object`."""
    return json_object({"value": value}, what)["value"]


def _depth_over(encoded: str, limit: int) -> bool:
    try:
        check_depth(encoded.encode("utf-8"), limit)
    except ValueError:
        return True
    return False


def choice(value: Any, what: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValidationError(f"{what} {value!r} is not accepted: use one of {', '.join(allowed)}")
    return value


def page_limit(value: Any, what: str = "limit", *, maximum: int, optional: bool = True) -> int | None:
    """A page size: a whole number from 1 to *maximum* (None: no limit, where *optional*)."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= maximum:
        raise ValidationError(f"{what} must be a whole number from 1 to {maximum}, got {value!r}")
    return value


def cursor(value: Any, what: str = "after") -> str | None:
    """A paging cursor: None (the first page) or the id of the last record of the previous page."""
    if value is None:
        return None
    return ident(value, what)


_STRING_OR_BRACKET = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.S)


def check_depth(raw: bytes, limit: int) -> None:
    """ValueError when the JSON text *raw* nests arrays/objects deeper than *limit* (checked before parsing).

    A document with at most *limit* opening brackets cannot be deeper: that
    costs two ``bytes.count``; only a larger one is scanned, skipping strings.
    """
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return
    brackets = b"".join(m for m in _STRING_OR_BRACKET.findall(raw) if len(m) == 1)
    steps = (1 if c in (0x5B, 0x7B) else -1 for c in brackets)
    if max(itertools.accumulate(steps), default=0) > limit:
        raise ValueError(f"nested deeper than {limit} levels")
