"""Messaging: inboxes and message history."""

from __future__ import annotations

import time

from .domain import validate as v
from .domain import clock as _clock
from .domain import delivery as _delivery
from .stores import dead_letters as _dead_letters
from . import _wiring, config, core
from ._logging import library_logger
from .errors import StorageError, ValidationError
from .governance import with_tally

__all__ = ["send_message", "check_inbox", "peek_inbox", "get_history", "pulse", "get_sent", "broadcast",
           "history_cursor", "receive", "ack", "dead_letters", "dead_letter_summary", "MAX_LEASE_S", "MAX_WAIT_S"]

_log = library_logger("federation.messaging")

MAX_HISTORY = 10_000
#: How many open polls one pulse returns at most (the oldest first; list_polls pages through the rest).
PULSE_MAX_POLLS = 100
_DIRECTIONS = ("sent", "received")
#: The longest lease receive grants (a day), and the longest pulse waits.
MAX_LEASE_S = _delivery.MAX_LEASE_S
MAX_WAIT_S = 30.0
#: How often a keyed send is sent again after a connection lost mid-commit (the key makes it safe).
_KEYED_RETRIES = 3


def send_message(sender: str, recipient: str, content: str, message_type: str = "task",
                 reply_to: str | None = None, idempotency_key: str | None = None) -> str:
    """Deliver *content* from *sender* to *recipient*'s inbox; the message id.

    *idempotency_key*: the same key from the same sender again returns the
    first send's id and writes nothing (across processes, and after a lost
    connection: a keyed send is retried, and may be retried by its caller).
    """
    v.agent(sender, "sender")
    v.agent(recipient, "recipient")
    v.content(content)
    v.text(message_type, "message_type", limit=64)
    if reply_to is not None:
        v.ident(reply_to, "reply_to")
    message = {"id": _clock.new_id(), "sender": sender, "recipient": recipient, "content": content,
               "message_type": message_type, "reply_to": reply_to, "timestamp": _clock.now()}
    if idempotency_key is not None:
        ids = _keyed_send([message], _key(idempotency_key))
        return ids[0]
    core.save_message(message)
    core.save_history("sent", [message])  # phase 1 only: SQL wrote it with the message
    return message["id"]


def _key(value: object) -> str:
    return v.text(value, "idempotency_key", limit=256)


def _keyed_send(messages: list[dict], key: str) -> list[str]:
    """Write *messages* under *key* unless it was used; a send whose commit may or may not have landed
    is simply sent again: the key finds it if it did."""
    for attempt in range(_KEYED_RETRIES + 1):
        try:
            ids = core.save_keyed_messages(messages, key)
            break
        except StorageError as exc:
            if "may or may not" not in str(exc) or attempt == _KEYED_RETRIES:
                raise
    if ids == [m["id"] for m in messages]:  # written now, not found
        core.save_history("sent", messages)  # phase 1 only: SQL wrote it with the messages
    return ids


def check_inbox(agent: str) -> list[dict]:
    """Claim and return *agent*'s unread messages, oldest first.

    Each message is delivered exactly once, however many processes check
    the same inbox at the same time.
    """
    v.agent(agent)
    messages = core.claim_inbox(agent, read_at=_clock.now())
    if messages:  # phase 1 only: SQL wrote them with the claim
        core.save_history("received", messages)
    return messages


def _lease_seconds(lease: object) -> float:
    if isinstance(lease, bool) or not isinstance(lease, (int, float)) or not 0 < lease <= MAX_LEASE_S:
        raise ValidationError(f"lease must be a number of seconds above 0 and at most {MAX_LEASE_S:.0f}, "
                              f"got {lease!r}")
    return float(lease)


def _lease(agent: str, lease: float, limit: int | None) -> list[dict]:
    now, until = _clock.now_and_after(lease)
    return core.lease_inbox(agent, lease_until=until, now=now, limit=limit, max_attempts=config.max_attempts())


def receive(agent: str, lease: float = 60, limit: int | None = None) -> list[dict]:
    """Lease *agent*'s unread messages, oldest first, for *lease* seconds (at least once delivery).

    Each message dict has the message keys plus ``attempt`` (1 the first
    time) and ``lease_until``.  Until the lease ends no one else receives
    it; :func:`ack` completes it (read, the sender's receipt says so); not
    acknowledged, it is delivered again with ``attempt + 1``; after
    ``FEDERATION_MAX_ATTEMPTS`` deliveries (default 5) it is a dead letter
    (:func:`dead_letters`) instead.  *limit*: at most that many.
    """
    v.agent(agent)
    lease = _lease_seconds(lease)
    limit = v.page_limit(limit, maximum=MAX_HISTORY)
    return _lease(agent, lease, limit)


def _ack_ids(ids: object) -> list[str]:
    if isinstance(ids, str) or not isinstance(ids, (list, tuple)):
        raise ValidationError(f"ids must be a list of message ids, got {type(ids).__name__}")
    if len(ids) > MAX_HISTORY:
        raise ValidationError(f"at most {MAX_HISTORY} ids at once, got {len(ids)}")
    return [v.ident(i, "message id") for i in ids]


def ack(agent: str, ids: list[str]) -> list[str]:
    """Acknowledge messages *agent* received (leased, or dead letters): read now, never delivered again.

    The ids acknowledged by this call; an id that is not a delivered,
    unacknowledged message of *agent* (never received, acknowledged before,
    someone else's) is left out.
    """
    v.agent(agent)
    wanted = _ack_ids(ids)
    return _ack(agent, wanted, _clock.now()) if wanted else []


def _ack(agent: str, ids: list[str], stamp: str) -> list[str]:
    done = core.ack_messages(agent, ids, read_at=stamp)
    if done:  # phase 1 only: SQL's history shows an acknowledged message as received
        core.save_history("received", done)
    return [m["id"] for m in done]


def dead_letters(agent: str) -> list[dict]:
    """*agent*'s messages delivered the maximum number of attempts and never acknowledged, oldest first.

    Each: the message keys plus ``attempt``, ``lease_until`` and ``dead_at``.
    They are never delivered again; :func:`ack` removes one.
    """
    v.agent(agent)
    return core.load_dead_letters(agent, now=_clock.now(), max_attempts=config.max_attempts())


def dead_letter_summary(phase: int, *, settings: config.Settings) -> dict:
    """Every agent's dead letters on the side that serves *phase* (for doctor, the dashboard, /metrics):
    ``{"count", "oldest_dead_at", "oldest_age_s"}``; read directly, not as an agent's call.

    *settings*: the federation whose database is read in phases 3-4; the
    files of phases 1-2 too (read through ``core`` while serving *settings*)."""
    return _dead_letters.dead_letter_summary(phase, settings=settings, read_files=core.FILE_SIDE["load_dead_letters"])


def peek_inbox(agent: str) -> list[dict]:
    """*agent*'s unread messages, oldest first, without claiming them."""
    v.agent(agent)
    return core.load_inbox(agent)


def history_cursor(entry: dict) -> str:
    """The cursor naming history *entry*: ``"<direction>:<message_id>"`` (pass it as ``before``)."""
    return f"{entry['direction']}:{entry['message_id']}"


def _history_position(before: object) -> tuple[str, str] | None:
    if before is None:
        return None
    if not isinstance(before, str) or before.count(":") != 1:
        raise ValidationError(f"before must be a history cursor such as 'sent:<message id>', got {before!r}")
    direction, message_id = before.split(":")
    v.choice(direction, "before (direction)", _DIRECTIONS)
    v.ident(message_id, "before (message id)")
    return direction, message_id


def get_history(agent: str | None = None, limit: int = 100, before: str | None = None) -> list[dict]:
    """The last *limit* history entries (sent and received), oldest first.

    *before*: a cursor (:func:`history_cursor` of an entry): only entries older
    than that entry, to page backwards; an unknown entry is a ValidationError.
    """
    if agent is not None:
        v.agent(agent)
    v.page_limit(limit, maximum=MAX_HISTORY, optional=False)
    position = _history_position(before)
    if position is None:
        return core.load_history(agent, limit)  # the legacy call, unchanged
    return core.load_history(agent, limit, position)


def get_sent(agent: str, limit: int = 100, before: str | None = None) -> list[dict]:
    """The last *limit* messages *agent* sent, oldest first, each with ``read_at`` (its read receipt).

    ``read_at`` is None until the recipient claimed the message.  From phase 2
    on the database answers; in phase 1 (files only) the legacy store keeps no
    receipts: the messages this process sent, with ``read_at`` always None.
    *before*: the id of a sent message; only older ones are returned.
    """
    v.agent(agent)
    v.page_limit(limit, maximum=MAX_HISTORY, optional=False)
    v.cursor(before, "before")
    return core.load_sent(agent, limit, before)


def _phase() -> int:
    """The rollout phase calls are routed by now: the federation's answer, the one it gives the shim."""
    return _wiring.phase()


def pulse(agent: str, claim: bool = True, lease: float | None = None, ack: list[str] | None = None,
          wait: float = 0) -> dict:
    """One call per tick: heartbeat, inbox, open polls to vote on, session roles, everyone's context.

    Records *agent*'s heartbeat, acknowledges *ack* (ids of messages it
    finished, as :func:`ack`), then takes its new messages: with *lease* (seconds)
    leases them as :func:`receive`; else claims them (exactly once, as
    :func:`check_inbox`); with ``claim=False`` only peeks.  *wait* (seconds, at
    most 30): when there is no message, wait for one, returning as soon as one
    arrives.  Returns ``{"agent", "phase", "messages", "open_polls",
    "more_open_polls", "roles", "agents"}`` (and ``"acked"`` when *ack* is given):
    the open polls *agent* has not voted on (the oldest ``PULSE_MAX_POLLS``, each with its
    tally; ``more_open_polls`` says whether there are more), its session roles
    (``session_id``, ``title``, ``role``, ``subtask``) and every known agent's
    ``agent``, ``text``, ``last_heartbeat`` (None for an agent that never set a context).
    """
    v.agent(agent)
    if not isinstance(claim, bool):
        raise ValidationError(f"claim must be true or false, got {claim!r}")
    if lease is not None:
        lease = _lease_seconds(lease)
    wanted = None if ack is None else _ack_ids(ack)
    if isinstance(wait, bool) or not isinstance(wait, (int, float)) or not 0 <= wait <= MAX_WAIT_S:
        raise ValidationError(f"wait must be a number of seconds from 0 to {MAX_WAIT_S:.0f}, got {wait!r}")
    stamp = _clock.now()
    core.save_heartbeat(agent, stamp)
    acked = _ack(agent, wanted, stamp) if wanted else []
    phase = _phase()
    messages = _take(agent, claim, lease, stamp)
    if not messages and wait > 0:
        messages = _wait_for_messages(agent, claim, lease, phase, time.monotonic() + wait)
    polls = core.load_open_polls(agent, PULSE_MAX_POLLS + 1)
    out = {
        "agent": agent,
        "phase": phase,
        "messages": messages,
        "open_polls": [with_tally(p) for p in polls[:PULSE_MAX_POLLS]],
        "more_open_polls": len(polls) > PULSE_MAX_POLLS,
        "roles": core.load_roles(agent),
        "agents": core.load_agent_states(),
    }
    if ack is not None:
        out["acked"] = acked
    return out


def _take(agent: str, claim: bool, lease: float | None, stamp: str | None = None) -> list[dict]:
    """What one pulse takes from the inbox: a lease, a claim or a look."""
    if lease is not None:
        return _lease(agent, lease, None)
    if not claim:
        return core.load_inbox(agent)
    messages = core.claim_inbox(agent, read_at=stamp or _clock.now())
    if messages:  # phase 1 only: SQL wrote them with the claim
        core.save_history("received", messages)
    return messages


def _wait_for_messages(agent: str, claim: bool, lease: float | None, phase: int, deadline: float) -> list[dict]:
    """Look again whenever the store says something changed (and at least every second) until *deadline*."""
    from ._wiring import current
    from .stores.wait import RECHECK_S, watcher

    try:
        watch = watcher(agent, phase, core.tree(), current().store.db.dialect if phase >= 3 else None)
    except Exception as exc:  # noqa: BLE001 - the watcher only saves work: without it, look every 0.25 s
        _log.warning("pulse_wait_watcher_failed", agent=agent, error=f"{type(exc).__name__}: {exc}")
        watch = None
    messages = _take(agent, claim, lease)  # what arrived while the watcher was being set up
    while not messages:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        try:
            if watch is None:
                raise RuntimeError("no watcher")
            watch.changed(min(left, RECHECK_S))
        except Exception:  # noqa: BLE001 - a watcher that fails (connection lost) degrades to polling
            watch = None
            time.sleep(min(left, 0.25))
        messages = _take(agent, claim, lease)
    return messages


def broadcast(sender: str, content: str, message_type: str = "task", role: str | None = None,
              idempotency_key: str | None = None) -> list[str]:
    """Send *content* to every known agent but *sender* (with *role*: those whose profile's
    ``default_role`` is *role*); the message ids, one per recipient, by recipient name.

    All the messages are written in one transaction (on the database; the
    legacy files get one file per recipient).  A role that no one has gives
    an empty list and writes nothing.  Each recipient claims its copy once.
    """
    v.agent(sender, "sender")
    v.content(content)
    v.text(message_type, "message_type", limit=64)
    if role is not None:
        v.text(role, "role", limit=256)
    key = None if idempotency_key is None else _key(idempotency_key)
    recipients = core.load_agents() if role is None else core.load_agents_by_role(role)
    recipients = sorted(a for a in set(recipients) if a != sender and v.is_agent(a))
    if not recipients:
        return []
    stamp = _clock.now()
    messages = [{"id": _clock.new_id(), "sender": sender, "recipient": r, "content": content,
                 "message_type": message_type, "reply_to": None, "timestamp": stamp} for r in recipients]
    if key is not None:  # the same key again: the first broadcast's ids, nothing written
        return _keyed_send(messages, key)
    core.save_messages(messages)
    core.save_history("sent", messages)  # phase 1 only: SQL wrote it with the messages
    return [m["id"] for m in messages]
