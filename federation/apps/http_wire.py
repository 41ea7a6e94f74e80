"""The HTTP server's wire: one JSON-RPC request read from an ASGI body, its headers, its reply's JSON.

Plain helpers of :mod:`federation.apps.mcp_http`'s endpoint, with no MCP in them.
"""

from __future__ import annotations

import json
from typing import Any, Callable

import pydantic_core

__all__ = ["one_request", "json_body", "headers_of", "is_json", "accepts_json", "read_body", "replay", "reply"]

_REQUEST_KEYS = frozenset(("jsonrpc", "id", "method", "params"))


def one_request(body: bytes) -> dict[str, Any] | None:
    """The body as one plain JSON-RPC request, or None (for the SDK's transport to answer as it does)."""
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if not (isinstance(doc, dict) and doc.keys() <= _REQUEST_KEYS and doc.get("jsonrpc") == "2.0"
            and isinstance(doc.get("method"), str) and isinstance(doc.get("params", {}), dict)):
        return None
    rid = doc.get("id")
    if isinstance(rid, bool) or not isinstance(rid, (str, int)):
        return None
    return doc


def json_body(doc: dict[str, Any]) -> bytes:
    """*doc* as compact JSON in UTF-8 (pydantic-core's encoder: a quarter of the stdlib's time for a tool's
    result); a string that UTF-8 cannot carry (a lone surrogate) makes it ASCII with escapes, as the stdlib
    writes it."""
    try:
        return pydantic_core.to_json(doc)
    except (pydantic_core.PydanticSerializationError, ValueError, TypeError):
        return json.dumps(doc, separators=(",", ":")).encode()


def headers_of(scope: dict) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}


def is_json(content_type: str) -> bool:
    return content_type.split(";", 1)[0].strip().lower() == "application/json"


def accepts_json(accept: str) -> bool:
    kinds = {part.split(";", 1)[0].strip().lower() for part in accept.split(",")}
    return bool(kinds & {"application/json", "application/*", "*/*"})


async def read_body(receive: Callable, length: int) -> tuple[bytes, dict | None]:
    """The body (at most *length* bytes were announced); and the message that came instead of the rest,
    if any (a disconnect), which makes the request the SDK's to answer."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks), message
        chunk = message.get("body", b"")
        size += len(chunk)
        chunks.append(chunk)
        if size > length:
            return b"".join(chunks), {"type": "http.request", "body": b"", "more_body": False}
        if not message.get("more_body", False):
            return b"".join(chunks), None


def replay(body: bytes, rest: dict | None, receive: Callable) -> Callable:
    """A receive() that gives *body* again, then *rest*, then what *receive* gives."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]
    if rest is not None and rest["type"] != "http.request":
        pending.append(rest)

    async def replayed() -> dict:
        return pending.pop(0) if pending else await receive()

    return replayed


async def reply(send: Callable, status: int, body: bytes, content_type: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
