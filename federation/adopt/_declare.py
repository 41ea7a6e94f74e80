"""The declarations an adopter writes (``Load``, ``Save``, ``Claim``, ``Atomic``), the entities they may name, the errors."""

from __future__ import annotations

import dataclasses

from ..domain import layout as _layout
from .._logging import library_logger
from ..errors import ConfigError, StorageError


log = library_logger("federation.adopt")


class DeclarationError(ConfigError):
    """A declaration that does not fit the module it is installed on (raised by :func:`install`)."""


class AdoptedWriteError(StorageError):
    """What an adopted function wrote cannot be put into the database (an invalid legacy record)."""


class AdoptedPhaseError(ConfigError):
    """The process is in phase 4 (database only): adopted code, which writes the legacy files, is not run."""


# ---------------------------------------------------------------------------
# declarations


@dataclasses.dataclass(frozen=True)
class Load:
    """The function reads one legacy document: its return value, or (``into``) the module global it sets."""

    entity: str
    key: str | None = None
    into: str | None = None    #: a module global: the document (polls), or a dict keyed by the key (keyed cache)
    shape: str | None = None   #: "list": the inbox is one list file per agent (nodes/{agent}/inbox.json)


@dataclasses.dataclass(frozen=True)
class Save:
    """The function writes one legacy document: the module global ``source``, or (no source) what it wrote."""

    entity: str
    key: str | None = None
    source: str | None = None  #: a module global: the document (polls), or a dict keyed by the key (keyed cache)
    shape: str | None = None   #: "list": Save("inbox", key=..., shape="list") writes an agent's whole list file


@dataclasses.dataclass(frozen=True)
class Claim:
    """The function reads and removes the unread messages of an inbox, returning them."""

    entity: str
    key: str | None = None
    shape: str | None = None


@dataclasses.dataclass(frozen=True)
class Atomic:
    """Declared on a caller (``join_session``): the whole call holds the document's lock, on both sides.

    For read-modify-write across calls: its own declared loads and saves run inside
    it (the lock is re-entrant), so no other adopted process changes the document
    between them.
    """

    entity: str
    key: str | None = None


SHAPES = (None, "list")


@dataclasses.dataclass(frozen=True)
class _Kind:
    """What the federation knows of one declarable entity: its legacy document and its database side."""

    document: str          #: the legacy document kind (entities.Entity.document)
    table: str             #: the name in events and counts
    verbs: tuple[type, ...]
    keyed: bool = True     #: one document per key (an agent, a session); polls.json is one for all
    records: str | None = None  #: how a value splits into records for comparison (shim.Spec.records)


#: The entities a declaration may name.
ENTITIES: dict[str, _Kind] = {
    "polls": _Kind("polls", "polls", (Load, Save), keyed=False, records="dict"),
    "session": _Kind("session", "sessions", (Load, Save)),
    "context": _Kind("context", "context", (Load, Save)),
    "expertise": _Kind("expertise", "expertise", (Load, Save)),
    "profile": _Kind("profile", "profiles", (Load, Save)),
    "message": _Kind("message", "messages", (Save,)),
    "inbox": _Kind("message", "messages", (Load, Claim, Save), records="id"),
}

#: the name of a per-agent list-file inbox (``shape="list"``), in nodes/{agent}/
LIST_INBOX = _layout.LIST_INBOX
