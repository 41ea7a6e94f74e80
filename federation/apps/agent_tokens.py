"""Bearer tokens of the agents served over HTTP (``federation agents add|list|revoke``).

A token is made of 32 random bytes (:func:`secrets.token_urlsafe`), shown once
by :func:`add` and never stored: ``$FEDERATION_ROOT/control/agents.json`` keeps
its SHA-256 only, beside the other control files, so every phase (phase 1 has
no database) and every host that mounts the root can check it.  The file is
written atomically under a lock with mode 0600, and read like any file under
the root: as untrusted input (size bounded, no symlink, only a regular file,
every entry validated).  A malformed file authenticates nobody (fail closed).

    {"version": 1,
     "agents": {"alice": {"sha256": "<64 hex>", "created_at": "...", "created_by": "user@host",
                          "revoked_at": null}}}

One token per agent: ``add`` again replaces the agent's token (the old one
stops working).  ``revoke`` keeps the entry with ``revoked_at`` set, so
``list`` shows when.  :class:`TokenRegistry` is what a server asks per request;
it re-reads the file when its signature (mtime, inode, size) changed, looked
at most once a second, so a revocation takes effect within about a second
without a restart.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from .._logging import library_logger

from ..domain import validate as v
from ..errors import ConfigError, CorruptFileError, FederationError, NotFoundError
from ..stores import files

__all__ = ["TOKENS_FILE", "MAX_FILE_BYTES", "TokenFileError", "AgentToken", "add", "revoke", "list_tokens",
           "tokens_path", "TokenRegistry", "token_hash"]

log = library_logger("federation.tokens")

TOKENS_FILE = "agents.json"
_LOCK_FILE = ".agents.lock"
FORMAT_VERSION = 1
#: A file larger than this is malformed (thousands of agents fit in it).
MAX_FILE_BYTES = 1024 * 1024
#: How often a registry looks at the file's signature: revocation takes effect within this.
CHECK_EVERY_S = 1.0
_TOKEN_BYTES = 32
_HEX = frozenset("0123456789abcdef")


class TokenFileError(FederationError):
    """``control/agents.json`` is not a token file this version can trust (nobody is authenticated)."""


@dataclass(frozen=True)
class AgentToken:
    """One agent's entry (its token's hash is never exposed beyond this module)."""

    agent: str
    created_at: str
    created_by: str
    revoked_at: str | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def to_json(self) -> dict[str, Any]:
        return {"agent": self.agent, "state": "active" if self.active else "revoked", "created_at": self.created_at,
                "created_by": self.created_by, "revoked_at": self.revoked_at}


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def tokens_path(root: Path) -> Path:
    """The tokens file of the federation under *root* (handed down: the CLI's, the HTTP server's)."""
    return Path(root) / "control" / TOKENS_FILE


# -- reading (untrusted input) -------------------------------------------------------------------

def _root_of(path: Path) -> Path:
    """The federation root above ``control/agents.json`` (the gate walks from it)."""
    return path.parent.parent


def _read_bytes(path: Path) -> bytes | None:
    """The file's bytes; None when it does not exist.  Through the gate: never follows a symlink (at the
    file or at ``control/``), never opens a FIFO, never reads more than the bound."""
    try:
        return files.read_regular(path, root=_root_of(path), limit=MAX_FILE_BYTES)
    except CorruptFileError as exc:
        raise TokenFileError(f"{path}: {exc.reason}; token files are not followed through links") from None
    except OSError as exc:
        raise TokenFileError(f"{path} cannot be read ({exc.strerror or exc})") from None


def _entry(name: Any, raw: Any, path: Path) -> tuple[AgentToken, str]:
    if not v.is_agent(name):
        raise TokenFileError(f"{path}: {str(name)[:80]!r} is not a valid agent name")
    if not isinstance(raw, dict):
        raise TokenFileError(f"{path}: the entry of {name!r} is not an object")
    digest = raw.get("sha256")
    if not (isinstance(digest, str) and len(digest) == 64 and set(digest) <= _HEX):
        raise TokenFileError(f"{path}: the entry of {name!r} has no valid sha256")
    fields = {}
    for key in ("created_at", "created_by", "revoked_at"):
        value = raw.get(key)
        if value is not None and not (isinstance(value, str) and len(value) <= 256):
            raise TokenFileError(f"{path}: the entry of {name!r} has an invalid {key}")
        fields[key] = value
    return AgentToken(name, fields["created_at"] or "", fields["created_by"] or "", fields["revoked_at"]), digest


class _Untrusted(ValueError):
    """What makes a token file untrustworthy while it is parsed (a non-finite number, a name given twice)."""


def _no_constant(name: str) -> Any:
    raise _Untrusted(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999 parses as infinity
        raise _Untrusted(f"{text[:40]} is not a finite number")
    return value


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object whose names are all different: a name given twice (an agent, a field) is not "the last one
    wins" (a revoked entry followed by an active one would undo the revocation)."""
    out: dict[str, Any] = {}
    for name, value in pairs:
        if name in out:
            raise _Untrusted(f"{name[:80]!r} is given twice")
        out[name] = value
    return out


def _parse(data: bytes, path: Path) -> dict[str, tuple[AgentToken, str]]:
    """agent -> (entry, sha256), or :class:`TokenFileError` saying what is wrong (never another exception)."""
    try:
        doc = json.loads(data.decode("utf-8"), parse_constant=_no_constant, parse_float=_finite,
                         object_pairs_hook=_unique)
    except _Untrusted as exc:  # fail closed: nobody is authenticated by a file that says two things
        raise TokenFileError(f"{path} is not a token file this version can trust: {exc}") from None
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise TokenFileError(f"{path} is not valid JSON ({type(exc).__name__})") from None
    if (not isinstance(doc, dict) or type(doc.get("version")) is not int or doc.get("version") != FORMAT_VERSION
            or not isinstance(doc.get("agents"), dict)):
        raise TokenFileError(f"{path} is not a token file of version {FORMAT_VERSION} "
                             "(an object with \"version\" and \"agents\")")
    entries = {name: _entry(name, raw, path) for name, raw in doc["agents"].items()}
    seen: dict[str, str] = {}
    for name, (entry, digest) in entries.items():
        if entry.active and digest in seen:  # one token naming two agents: which one would it act as?
            raise TokenFileError(f"{path}: agents {seen[digest]!r} and {name!r} share one token")
        if entry.active:
            seen[digest] = name
    return entries


def _load(path: Path) -> dict[str, tuple[AgentToken, str]]:
    data = _read_bytes(path)
    return {} if data is None else _parse(data, path)


def list_tokens(root: Path) -> list[AgentToken]:
    """Every agent with a token (active or revoked), sorted by name.  Raises :class:`TokenFileError`."""
    return [entry for _name, (entry, _digest) in sorted(_load(tokens_path(root)).items())]


# -- writing ---------------------------------------------------------------------------------------

def _now() -> str:
    from ..rollout import iso, utcnow

    return iso(utcnow())


def _who() -> str:
    from ..rollout import who

    return who()


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One writer of the token file at a time (an advisory lock beside it), through the gate: a linked
    ``control/`` or lock file is refused (:class:`TokenFileError`), nothing is made outside the root."""
    root = _root_of(path)
    if not files.root_is_folder(root):
        raise ConfigError(f"the federation root {root} does not exist")
    try:
        with files.flock_file(path.parent / _LOCK_FILE, root):
            yield
    except CorruptFileError as exc:
        raise TokenFileError(f"{exc.path}: {exc.reason}") from None


def _write(path: Path, entries: dict[str, tuple[AgentToken, str]]) -> None:
    """Replace the file atomically (temp file made with O_EXCL in the same folder, fsync, rename), mode 0600,
    through the gate."""
    doc = {"version": FORMAT_VERSION, "agents": {
        name: {"sha256": digest, "created_at": e.created_at, "created_by": e.created_by, "revoked_at": e.revoked_at}
        for name, (e, digest) in sorted(entries.items())}}
    try:
        files.write_bytes(path, json.dumps(doc, indent=2).encode("utf-8") + b"\n", root=_root_of(path),
                          durable=True, mode=0o600)  # durable: a revocation must survive a power cut
    except CorruptFileError as exc:
        raise TokenFileError(f"{exc.path}: {exc.reason}") from None


def add(agent: str, root: Path) -> tuple[str, bool]:
    """A new token for *agent* (replacing its earlier one, if any): (token, replaced).

    The token is returned here and nowhere else; only its SHA-256 is written.
    """
    agent = v.agent(agent, "agent")
    path = tokens_path(root)
    with _locked(path):
        entries = _load(path)
        replaced = agent in entries and entries[agent][0].active
        token = secrets.token_urlsafe(_TOKEN_BYTES)
        entries[agent] = (AgentToken(agent, _now(), _who(), None), token_hash(token))
        _write(path, entries)
    log.info("agent_token_added", agent=agent, replaced=replaced)
    return token, replaced


def revoke(agent: str, root: Path) -> bool:
    """Revoke *agent*'s token: False when it was already revoked; :class:`NotFoundError` when it has none."""
    agent = v.agent(agent, "agent")
    path = tokens_path(root)
    with _locked(path):
        entries = _load(path)
        if agent not in entries:
            raise NotFoundError(f"agent {agent!r} has no token (`federation agents list` shows who has one)")
        entry, digest = entries[agent]
        if not entry.active:
            return False
        entries[agent] = (AgentToken(agent, entry.created_at, entry.created_by, _now()), digest)
        _write(path, entries)
    log.info("agent_token_revoked", agent=agent)
    return True


# -- checking (what a server does per request) --------------------------------------------------

class TokenRegistry:
    """Which agent a bearer token names, from the token file as it is now (re-read when it changed)."""

    def __init__(self, path: Path, check_every: float = CHECK_EVERY_S):
        self.path = path
        self.check_every = check_every
        self._lock = threading.Lock()
        self._signature: tuple[int, int, int] | None = None
        self._by_hash: dict[str, str] = {}
        self._next_check = 0.0
        self.problem: str | None = None

    def agent_for(self, token: str) -> str | None:
        """The active agent *token* names, or None (unknown, revoked, or the file is unreadable)."""
        if not token or len(token) > 512:
            return None
        by_hash = self._current()
        return by_hash.get(token_hash(token))

    def agents(self) -> list[str]:
        """The agents with an active token now (none while the file is unreadable)."""
        return sorted(self._current().values())

    def _current(self) -> dict[str, str]:
        now = time.monotonic()
        if now < self._next_check:
            return self._by_hash
        with self._lock:
            if now >= self._next_check:
                self._refresh()
                self._next_check = time.monotonic() + self.check_every
            return self._by_hash

    def _refresh(self) -> None:
        try:
            st = files.lstat(self.path, root=_root_of(self.path))  # through the gate: control/ as a link is refused
            signature = None if st is None else (st.st_mtime_ns, st.st_ino, st.st_size)
        except CorruptFileError as exc:
            self._fail(f"{exc.path}: {exc.reason}")
            return
        except OSError as exc:
            self._fail(f"{self.path} cannot be read ({exc.strerror or exc})")
            return
        if signature == self._signature and self.problem is None:
            return
        try:
            entries = _load(self.path)
        except TokenFileError as exc:
            self._signature = signature
            self._fail(str(exc))
            return
        self._signature = signature
        self._by_hash = {digest: name for name, (entry, digest) in entries.items() if entry.active}
        if self.problem is not None:
            log.info("agent_tokens_readable", path=str(self.path))
        self.problem = None

    def _fail(self, message: str) -> None:
        # fail closed: a file that cannot be trusted authenticates nobody (a revocation must not be lost)
        self._by_hash = {}
        if message != self.problem:
            log.error("agent_tokens_unreadable", path=str(self.path), error=message,
                      detail="no agent is authenticated until the file is fixed (`federation agents add` "
                             "rewrites it only when it is readable)")
        self.problem = message
