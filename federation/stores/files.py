"""Low-level helpers for the legacy JSON file tree.

What the legacy path should always have done: agent names validated before
they touch a path, every write through a temp file + rename (a reader never
sees a torn file), and an advisory lock around every read-modify-write.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import threading
from pathlib import Path
from typing import Any

from ..domain import validate as _validate
from ..domain.entities import INBOX_DIR, NODE_FILE_OF, NODE_FILES, NODES_DIR, POLLS_FILE, SESSIONS_DIR, SHARED_DIR
from ..errors import CorruptFileError, FileStorageError

__all__ = ["Tree", "atomic_write_json", "read_json", "locked"]

LOCK_DIR = ".locks"


class Tree:
    """Paths of the legacy layout under one federation root.

    Per-agent and per-id paths are cached: pathlib joins cost microseconds,
    which a hot read path pays on every call.
    """

    def __init__(self, root: Path):
        self.root = Path(root)
        self._paths: dict[tuple[str, str], Path] = {}

    def _cached(self, kind: str, name: str, build) -> Path:
        key = (kind, name)
        path = self._paths.get(key)
        if path is None:
            path = build()
            if len(self._paths) > 65536:
                self._paths.clear()
            self._paths[key] = path
        return path

    @property
    def nodes(self) -> Path:
        return self.root / NODES_DIR

    @property
    def shared(self) -> Path:
        return self.root / SHARED_DIR

    @property
    def polls_file(self) -> Path:
        return self._cached("polls", "", lambda: self.shared / POLLS_FILE)

    @property
    def sessions_dir(self) -> Path:
        return self.shared / SESSIONS_DIR

    def node(self, agent: str) -> Path:
        return self._cached("node", agent, lambda: self.nodes / _validate.agent(agent))

    def inbox(self, agent: str) -> Path:
        return self._cached("inbox", agent, lambda: self.node(agent) / INBOX_DIR)

    def message_file(self, agent: str, message_id: str) -> Path:
        return self.inbox(agent) / f"{_validate.ident(message_id, 'message id')}.json"

    def context_file(self, agent: str) -> Path:
        return self._cached("context", agent, lambda: self.node(agent) / NODE_FILE_OF["context"])

    def expertise_file(self, agent: str) -> Path:
        return self._cached("expertise", agent, lambda: self.node(agent) / NODE_FILE_OF["expertise"])

    def profile_file(self, agent: str) -> Path:
        return self._cached("profile", agent, lambda: self.node(agent) / NODE_FILE_OF["profile"])

    def session_file(self, session_id: str) -> Path:
        return self.sessions_dir / f"{_validate.ident(session_id, 'session id')}.json"

    def has_legacy_data(self) -> bool:
        """True when any legacy state file exists under the root."""
        if self.polls_file.exists():
            return True
        if self.sessions_dir.is_dir() and any(p.suffix == ".json" for p in self.sessions_dir.iterdir()):
            return True
        if self.nodes.is_dir():
            for node in self.nodes.iterdir():
                if not node.is_dir():
                    continue
                for name in NODE_FILES:
                    if (node / name).exists():
                        return True
                inbox = node / INBOX_DIR
                if inbox.is_dir() and any(p.suffix == ".json" for p in inbox.iterdir()):
                    return True
        return False

    # -- locks -------------------------------------------------------------
    def lock_path(self, name: str) -> Path:
        return self.root / LOCK_DIR / f"{name}.lock"


_held = threading.local()
_fds: dict[tuple[str, str, int], int] = {}
_fds_lock = threading.Lock()
_MAX_CACHED_FDS = 256


def _lock_fd(tree: Tree, name: str, held: dict) -> int:
    """An open descriptor of the lock file, cached per process and thread (flock is per descriptor)."""
    key = (str(tree.root), name, threading.get_ident())
    fd = _fds.get(key)
    if fd is not None and _fds.get(("pid",)) == os.getpid():
        return fd
    path = tree.lock_path(name)
    # read-only: flock needs no write access, and a descriptor open for writing
    # would stop the filesystem from being remounted read-only
    try:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except FileNotFoundError:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:  # read-only root, permissions: typed, naming the lock file
        raise FileStorageError.wrap(exc, path, "open the lock file") from exc
    with _fds_lock:
        if _fds.get(("pid",)) != os.getpid():  # a forked child: the parent's descriptors are not ours
            _fds.clear()
            _fds[("pid",)] = os.getpid()
        if len(_fds) > _MAX_CACHED_FDS:
            for k, old in list(_fds.items()):
                if k != ("pid",) and k[2] == threading.get_ident() and (k[0], k[1]) not in held:
                    os.close(old)
                    del _fds[k]
        _fds[key] = fd
    return fd


class locked:
    """An exclusive advisory lock (flock) named *name* under the root.

    Re-entrant within a thread: a function that holds ``polls`` may call
    another that takes ``polls`` again.  Different threads and processes
    exclude each other (each thread locks its own descriptor).  A class, not
    a generator: it is on every dual-phase call.
    """

    __slots__ = ("tree", "name", "key", "fd")

    def __init__(self, tree: Tree, name: str):
        self.tree, self.name, self.key, self.fd = tree, name, (str(tree.root), name), None

    def __enter__(self) -> None:
        held = getattr(_held, "locks", None)
        if held is None:
            held = _held.locks = {}
        if self.key in held:
            held[self.key] += 1
            return
        fd = _lock_fd(self.tree, self.name, held)
        fcntl.flock(fd, fcntl.LOCK_EX)
        held[self.key] = 1
        self.fd = fd

    def __exit__(self, *exc: object) -> None:
        held = _held.locks
        if self.fd is None:
            held[self.key] -= 1
            return
        del held[self.key]
        fcntl.flock(self.fd, fcntl.LOCK_UN)


def atomic_write_json(path: Path, data: Any) -> None:
    """Write *data* as JSON to *path* via a temp file in the same folder + rename.

    Any failure (disk full, read-only, permissions) raises :class:`FileStorageError`
    and leaves *path* as it was and no temp file behind.
    """
    payload = json.dumps(data, ensure_ascii=False, indent=2).encode("utf-8")
    directory = path.parent
    tmp = directory / f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp"
    try:
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        except FileNotFoundError:
            directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    except OSError as exc:
        raise FileStorageError.wrap(exc, path, "write") from exc
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)  # ENOSPC may surface here or at close
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise FileStorageError.wrap(exc, path, "write") from exc
        raise


def parse_json_bytes(raw: bytes) -> Any:
    """Parse a legacy file's bytes; raise ValueError with a short reason."""
    if not raw.strip():
        raise ValueError("empty file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 ({exc.reason} at byte {exc.start})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None


def read_json(path: Path, expect: type = dict, default: Any = None) -> Any:
    """Read a legacy JSON file; *default* when it does not exist.

    A file that cannot be parsed raises :class:`CorruptFileError` and is left
    exactly as it is.
    """
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except FileNotFoundError:
        return default
    except IsADirectoryError:
        raise CorruptFileError(path, "is a directory") from None
    except OSError as exc:  # EACCES, EIO...: typed, naming the file
        raise FileStorageError.wrap(exc, path, "read") from exc
    try:
        data = parse_json_bytes(raw)
    except ValueError as exc:
        raise CorruptFileError(path, str(exc)) from None
    if not isinstance(data, expect):
        raise CorruptFileError(path, f"expected a JSON {expect.__name__}, found {type(data).__name__}")
    return data


def remove(path: Path) -> bool:
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False
    except OSError as exc:
        if exc.errno == errno.EISDIR:
            return False
        raise FileStorageError.wrap(exc, path, "remove") from exc
