"""Adopting the shim on your own code: one declaration per persistence function.

A codebase in the migration plan's own style (module globals, zero-argument
``load_polls()`` / ``save_polls()``, JSON files in the federation's legacy
layout) says, per function, which legacy document it loads, saves or
claims and where the value is; the federation does the rest with its own
entity descriptions, SQL store, locks and control plane::

    from federation import adopt
    adopt.install(core, {
        "load_polls":   adopt.Load("polls", into="active_polls"),
        "save_polls":   adopt.Save("polls", source="active_polls"),
        "load_session": adopt.Load("session", key="sid", into="SESSIONS"),   # a keyed cache
        "save_session": adopt.Save("session", key="sid", source="SESSIONS"),
        "join_session": adopt.Atomic("session", key="sid"),                  # load-then-save, one lock
        "load_inbox":   adopt.Load("inbox", key="agent", shape="list"),       # nodes/{agent}/inbox.json
        "check_inbox":  adopt.Claim("inbox", key="agent"),
    })

(``examples/seed_core`` and ``examples/plan_core`` are whole cores adopted this way; docs/adopting.md.)

What every declared call gets:

- it holds its document's file lock (re-entrant within a thread, so a wrapped
  ``save_context`` may call its wrapped ``load_context``), in every phase; an
  ``Atomic`` caller holds it across its own loads and saves;
- a whole-document save (``source=``, or what a keyed or list-file save wrote)
  is merged as a delta against what the same thread loaded, on both sides, so
  concurrent read-modify-writes lose nothing (phase 1 included: the files);
- phase 2 runs the adopter's function (the files) first and mirrors it into
  the database; phase 3 the database first, a ``Load`` answering from it (into
  the module global for ``into=``, keyed by the key for a keyed cache); the other
  side is compared, and mismatches are logged and counted by the project's own
  machinery (the shim's ``Experiment.publish``, the rollout counters);
- where a record only exists once the adopter's function wrote it (``Save``
  without ``source``), "database first" means the database decides: if its
  write fails, the file is put back as it was and the call fails;
- phase 4 is not run by adopted code, which writes the files: ``install`` refuses
  in phase 4 and a declared call raises :class:`AdoptedPhaseError` (nothing
  written) when the process is in phase 4; ``rollout set 4`` is refused while an
  adopted process is alive.  To finish, call ``federation.*``.
"""

from __future__ import annotations

import ast
import contextlib
import copy
import dataclasses
import inspect
import json
import marshal
import os
import random
import stat
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import wrapt

from shim import DB, FILES, Experiment, Observation, Outcome, Phase, Spec, delta, patch

from .domain import clock as _clock
from .domain import layout as _layout
from .domain.compare import record_diff
from .stores import files as _files
from . import core, rollout
from ._logging import library_logger
from ._wiring import candidate
from .domain.entities import (CONTEXT, MESSAGES, POLLS, PROFILES, SESSION_ARTIFACTS, SESSION_REVIEWS,
                              SESSION_ROLES, SESSIONS, document_lock)
from .errors import ConfigError, CorruptFileError, StorageError

__all__ = ["Load", "Save", "Claim", "Atomic", "install", "install_when_imported", "uninstall", "installed",
           "DeclarationError", "AdoptedWriteError", "AdoptedPhaseError", "ENTITIES"]

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


# ---------------------------------------------------------------------------
# the legacy record as the federation reads it (what the database side returns), for comparisons


def _legacy_view(entity: str, owner: str | None, value: Any) -> Any:
    """*value* read by an adopter's function, with the defaults the database side applies."""
    if not isinstance(value, (dict, list)):
        return value
    if entity == "polls" and isinstance(value, dict):
        return {pid: {**POLLS.record(p, fallback={"id": pid}), "votes": dict(p.get("votes") or {})}
                if isinstance(p, dict) else p for pid, p in value.items()}
    if entity == "context" and isinstance(value, dict):
        return CONTEXT.record(value, given={"agent": owner})
    if entity == "profile" and isinstance(value, dict):
        return PROFILES.record(value, given={"agent": owner})
    if entity == "expertise" and isinstance(value, dict):
        domains = value.get("domains") or []
        return {"agent": owner, "domains": sorted(domains), "updated_at": value.get("updated_at")} if domains \
            else None
    if entity == "session" and isinstance(value, dict):
        session = SESSIONS.record(value, fallback={"id": owner})
        for part in (SESSION_ROLES, SESSION_ARTIFACTS, SESSION_REVIEWS):
            session[part.container] = dict(value.get(part.container) or {})
        return session
    if entity == "inbox" and isinstance(value, list):
        return sorted((MESSAGES.record(m, fallback={"recipient": owner}) if isinstance(m, dict) else m
                       for m in value), key=lambda m: (str(m.get("timestamp") or ""), str(m.get("id")))
                      if isinstance(m, dict) else ("", ""))
    return value


def _is_read(message: Any) -> bool:
    """A message of a list-file inbox that its reader marked read (``read: true`` or a ``read_at``)."""
    return isinstance(message, dict) and bool(message.get("read") or message.get("read_at"))


def _unread(value: Any) -> Any:
    """The unread messages of a list-file inbox (what the database's inbox holds)."""
    return [m for m in value if not _is_read(m)] if isinstance(value, list) else value


def _by_id(value: Any) -> dict[str, dict]:
    """A list of messages as {id: message} (a message without a text id cannot be merged: left out)."""
    if not isinstance(value, list):
        return {}
    return {m["id"]: m for m in value if isinstance(m, dict) and isinstance(m.get("id"), str)}


def _db_load(store: Any, entity: str, owner: str | None) -> Any:
    """The database's answer to a Load of *entity*."""
    if entity == "polls":
        return store.load_polls()
    if entity == "inbox":
        return store.load_inbox(owner)
    method = {"context": store.load_context, "expertise": store.load_expertise, "profile": store.load_profile,
              "session": store.load_session}[entity]
    return method(owner)


def _copy(value: Any) -> Any:
    """A deep copy of a JSON document (marshal: ten times faster than copy.deepcopy on a polls.json)."""
    try:
        return marshal.loads(marshal.dumps(value))
    except ValueError:  # a type marshal does not know: the general copy
        return copy.deepcopy(value)


_ABSENT = object()


@dataclasses.dataclass(frozen=True)
class _Frozen:
    """A document marshal cannot hold: a deep copy."""

    value: Any


def _freeze(value: Any) -> Any:
    try:
        return marshal.dumps(value)
    except ValueError:
        return _Frozen(copy.deepcopy(value))


def _thaw(frozen: Any) -> Any:
    return marshal.loads(frozen) if isinstance(frozen, bytes) else copy.deepcopy(frozen.value)


# ---------------------------------------------------------------------------
# installing


class _Adoption:
    """The declared functions of one module, wrapped."""

    #: the bases kept per process (a thread that never loaded a document merges against these): bounded
    MAX_BASES = 4096

    def __init__(self, module: Any, declarations: Mapping[str, Any]):
        self.module = module
        self.name = module.__name__
        self.originals: dict[str, Callable] = {}
        self.aliases: list[tuple[Any, str, Callable]] = []  # (module, name, original) patched elsewhere
        self.plans: dict[str, _Plan] = {}
        # the shim's own publishing (events, then observers): mismatches compared, logged and counted as for our core
        self.experiment = Experiment(module, candidate, rollout.mode, None, (rollout.observe,), record_diff)
        self._bases = threading.local()
        self._last_base: dict[Any, Any] = {}
        for fname, decl in declarations.items():
            self.plans[fname] = _Plan.check(module, fname, decl)

    def wrap(self) -> None:
        for fname, plan in self.plans.items():
            self.originals[fname] = getattr(self.module, fname)
            wrapper = self._atomic(plan) if isinstance(plan.decl, Atomic) else self._wrapper(plan)
            wrapt.wrap_function_wrapper(self.module, fname, wrapper)
        try:
            self._patch_aliases()
        except DeclarationError:
            self.unwrap()
            raise

    def unwrap(self) -> None:
        for mod, attr, original in self.aliases:
            with contextlib.suppress(Exception):
                setattr(mod, attr, original)
        self.aliases = []
        for fname, original in self.originals.items():
            setattr(self.module, fname, original)

    def _patch_aliases(self) -> None:
        """Module-level names bound to an adopted function elsewhere in the package (``from .state import
        save_polls`` run before the install) now name the wrapped function too; one that cannot be
        patched is refused, named."""
        package = self.name.split(".")[0]
        originals = {id(fn): fname for fname, fn in self.originals.items()}
        refused = []
        for mod_name, mod in list(sys.modules.items()):
            if mod is None or mod is self.module or not (mod_name == package or mod_name.startswith(package + ".")):
                continue
            try:
                names = list(vars(mod).items())
            except TypeError:
                continue
            for attr, value in names:
                fname = originals.get(id(value))
                if fname is None or value is not self.originals[fname]:
                    continue
                try:
                    setattr(mod, attr, getattr(self.module, fname))
                except Exception as exc:  # noqa: BLE001 - a module that refuses: named, nothing left half-done
                    refused.append(f"{mod_name}.{attr} ({type(exc).__name__}: {exc})")
                    continue
                self.aliases.append((mod, attr, value))
                log.info("adopt_alias_patched", alias=f"{mod_name}.{attr}", function=f"{self.name}.{fname}")
        if refused:
            raise DeclarationError(f"{self.name}: these names bind an adopted function and cannot be patched: "
                                   f"{', '.join(refused)}; install the adoption before they are imported "
                                   "(adopt.install_when_imported)")

    # -- the thread's base of each whole document --------------------------------
    # Kept frozen (marshal bytes: a third of a copy's cost) and thawed only when a save needs it.
    def base(self, document: Any, default: Any = None) -> Any:
        bases = getattr(self._bases, "docs", None) or {}
        frozen = bases[document] if document in bases else self._last_base.get(document, _ABSENT)
        # a thread that never loaded it: what this process loaded last (a load at import time, say)
        return default if frozen is _ABSENT else _thaw(frozen)

    def frozen(self, document: Any) -> Any:
        bases = getattr(self._bases, "docs", None) or {}
        return bases[document] if document in bases else self._last_base.get(document, _ABSENT)

    def raw(self, document: Any) -> bytes | None:
        """The bytes the file held when this thread loaded *document* (phase 1: a save of an unchanged file
        writes the caller's document as it is, without re-reading it)."""
        return (getattr(self._bases, "raw", None) or {}).get(document)

    def remember(self, document: Any, value: Any, *, raw: bytes | None = None, frozen: Any = None) -> None:
        bases = getattr(self._bases, "docs", None)
        if bases is None:
            bases = self._bases.docs = {}
            self._bases.raw = {}
        if raw is None:
            self._bases.raw.pop(document, None)
        else:
            self._bases.raw[document] = raw
        bases[document] = frozen = _freeze(value) if frozen is None else frozen
        if document not in self._last_base and len(self._last_base) >= self.MAX_BASES:
            with contextlib.suppress(StopIteration, KeyError, RuntimeError):
                del self._last_base[next(iter(self._last_base))]  # the oldest: a bounded memory
        self._last_base[document] = frozen

    def _wrapper(self, plan: "_Plan") -> Callable:
        def wrapper(wrapped: Callable, instance: Any, args: tuple, kwargs: dict) -> Any:
            try:
                owner = plan.owner(args, kwargs)
            except TypeError:
                return wrapped(*args, **kwargs)  # a bad call: the adopter's function says what is wrong
            phase = _phase_of_call(f"{self.name}.{plan.name}")
            call = _Call(self, plan, wrapped, args, kwargs, owner, phase)
            with core.file_lock(document_lock(plan.kind.document, owner or "")):
                return call.run()

        return wrapper

    def _atomic(self, plan: "_Plan") -> Callable:
        def wrapper(wrapped: Callable, instance: Any, args: tuple, kwargs: dict) -> Any:
            try:
                owner = plan.owner(args, kwargs)
            except TypeError:
                return wrapped(*args, **kwargs)
            _phase_of_call(f"{self.name}.{plan.name}")  # refuses phase 4 before anything runs
            with core.file_lock(document_lock(plan.kind.document, owner or "")):
                return wrapped(*args, **kwargs)

        return wrapper


def _phase_4_refusal(what: str) -> AdoptedPhaseError:
    return AdoptedPhaseError(
        f"{what}: this process is in phase 4 (database only), and adopted code writes the legacy files: "
        "it is not run in phase 4 (nothing was written); finish by calling federation.* (docs/adopting.md, "
        "'Phase 4'), or go back to phase 3 (rollout set 3, or the process's FEDERATION_PHASE)")


def _phase_of_call(what: str) -> tuple[Phase, float]:
    """The phase of this call (decided once, at its start), as for the project's own code.

    Adopted functions never run phase 4 (their file code would write the files the
    fleet no longer keeps): a call in phase 4, by the flag or a pin, is refused.
    """
    phase, sample = rollout.mode()
    if phase == 4:
        raise _phase_4_refusal(what)
    return Phase(phase), sample


# ---------------------------------------------------------------------------
# the shape a function writes, from its source (a declaration that does not fit is refused at install)

_LIST_METHODS = {"append", "extend", "insert", "sort", "reverse"}
_RECORD_METHODS = {"get", "keys", "items", "values", "update", "setdefault"}
_LIST_NAMES = {"inbox", "msgs", "messages", "items", "entries", "records", "rows", "unread", "mails"}
_RECORD_NAMES = {"msg", "message", "record", "entry", "doc", "item", "mail"}


def _function_ast(fn: Callable) -> ast.FunctionDef | ast.AsyncFunctionDef | None:
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(inspect.unwrap(fn))))
    except (OSError, TypeError, SyntaxError, IndentationError):
        return None
    node = tree.body[0] if tree.body else None
    return node if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) else None


def _shape_of_name(fdef: ast.AST, name: str, default: ast.AST | None) -> str | None:
    """"list" or "record" by how *name* is used in *fdef* (its default, assignments, loops, methods)."""
    votes = {"list": 0, "record": 0}
    if isinstance(default, (ast.List, ast.Tuple, ast.ListComp)):
        votes["list"] += 1
    elif isinstance(default, (ast.Dict, ast.DictComp)):
        votes["record"] += 1
    for node in ast.walk(fdef):
        if isinstance(node, (ast.For, ast.comprehension)) and isinstance(node.iter, ast.Name) and \
                node.iter.id == name:
            votes["list"] += 1
        elif isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            if isinstance(node.value, (ast.List, ast.ListComp)):
                votes["list"] += 1
            elif isinstance(node.value, (ast.Dict, ast.DictComp)):
                votes["record"] += 1
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == name:
            if node.attr in _LIST_METHODS:
                votes["list"] += 1
            elif node.attr in _RECORD_METHODS:
                votes["record"] += 1
        elif isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id == name:
            index = node.slice
            if isinstance(index, ast.Constant) and isinstance(index.value, str):
                votes["record"] += 1
            elif isinstance(index, ast.Slice) or (isinstance(index, ast.Constant) and isinstance(index.value, int)):
                votes["list"] += 1
    if votes["list"] != votes["record"]:
        return "list" if votes["list"] > votes["record"] else "record"
    lowered = name.lower()
    if lowered in _LIST_NAMES:
        return "list"
    if lowered in _RECORD_NAMES:
        return "record"
    return None


def _written_value(fdef: ast.AST) -> str | None:
    """The name the function writes with ``json.dump(NAME, …)`` / ``json.dumps(NAME, …)`` (first found)."""
    for node in ast.walk(fdef):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                node.func.attr in ("dump", "dumps") and node.args and isinstance(node.args[0], ast.Name):
            return node.args[0].id
    return None


def _mentions_list_file(fdef: ast.AST) -> bool:
    return any(isinstance(n, ast.Constant) and isinstance(n.value, str) and n.value.endswith(LIST_INBOX)
               for n in ast.walk(fdef))


def _check_shape(where: str, fn: Callable, fname: str, decl: Any, signature: inspect.Signature | None) -> str | None:
    """Refuse a declaration whose shape contradicts what the function's source writes or reads; the
    parameter whose value the function writes as it is (``json.dumps(msgs)``), if one does."""
    fdef = _function_ast(fn)
    if fdef is None:
        return None  # no source (a builtin, a lambda in a REPL): nothing to check against
    listed = getattr(decl, "shape", None) == "list"
    if decl.entity in ("message", "inbox") and not listed and _mentions_list_file(fdef):
        raise DeclarationError(f"{where}: {fname} uses a list file {LIST_INBOX!r}, but {type(decl).__name__}"
                               f"({decl.entity!r}) declares per-message files; declare the list file: "
                               f"{type(decl).__name__}('inbox', key={decl.key!r}, shape='list')")
    if not isinstance(decl, Save) or decl.source is not None:
        return None
    name = _written_value(fdef)
    if name is None:
        return None
    params = signature.parameters if signature is not None else {}
    default = None
    if name in params and params[name].default is not inspect.Parameter.empty:
        default = ast.parse(repr(params[name].default), mode="eval").body \
            if isinstance(params[name].default, (list, dict, tuple)) else None
    shape = _shape_of_name(fdef, name, default)
    what = f"parameter {name!r}" if name in params else f"{name!r}"
    if listed and shape == "record":
        raise DeclarationError(f"{where}: Save('inbox', shape='list') declares a whole list of messages, but "
                               f"{fname} writes one record ({what}); one message into per-message files is "
                               f"Save('message', key={decl.key!r})")
    if not listed and shape == "list":
        hint = f"Save('inbox', key={decl.key!r}, shape='list')" if decl.entity in ("message", "inbox") else \
            "one record per document"
        raise DeclarationError(f"{where}: Save({decl.entity!r}) declares one record, but {fname} writes a list "
                               f"({what}); a per-agent list of messages is declared {hint}")
    assigned = any(isinstance(n, (ast.Assign, ast.AugAssign)) and any(
        isinstance(t, ast.Name) and t.id == name for t in (n.targets if isinstance(n, ast.Assign) else [n.target]))
        for n in ast.walk(fdef))
    return name if name in params and not assigned else None


@dataclasses.dataclass
class _Plan:
    """One checked declaration: the function, its entity, where its key and value are."""

    name: str
    decl: Any
    entity: str
    kind: _Kind
    signature: inspect.Signature | None
    spec: Spec
    owner_of: Callable[[tuple, dict], str | None]
    written_param: str | None = None  #: the parameter the function writes as it is (json.dumps(msgs))

    def argument(self, name: str, args: tuple, kwargs: dict) -> Any:
        """The value of parameter *name* in this call (a KeyError when it has none)."""
        if self.signature is None:
            raise KeyError(name)
        bound = self.signature.bind(*args, **kwargs)
        bound.apply_defaults()
        return bound.arguments[name]

    @classmethod
    def check(cls, module: Any, fname: str, decl: Any) -> "_Plan":
        where = f"{module.__name__}.{fname}"
        fn = getattr(module, fname, None)
        if not callable(fn):
            raise DeclarationError(f"{where}: the module has no function {fname!r} to adopt")
        if not isinstance(decl, (Load, Save, Claim, Atomic)):
            raise DeclarationError(f"{where}: declare it with adopt.Load, adopt.Save, adopt.Claim or adopt.Atomic, "
                                   f"not {type(decl).__name__}")
        verb = type(decl).__name__
        kind = ENTITIES.get(decl.entity)
        if kind is None:
            raise DeclarationError(f"{where}: unknown entity {decl.entity!r}: use one of {', '.join(ENTITIES)}")
        shape = getattr(decl, "shape", None)
        if shape not in SHAPES:
            raise DeclarationError(f"{where}: shape={shape!r}: the only shape is 'list' (a per-agent list-file inbox)")
        if shape == "list" and decl.entity != "inbox":
            raise DeclarationError(f"{where}: shape='list' is for the inbox (nodes/{{agent}}/{LIST_INBOX}), "
                                   f"not {decl.entity}")
        if isinstance(decl, Claim) and shape == "list":
            raise DeclarationError(f"{where}: Claim on a list-file inbox: declare its load and save with "
                                   "shape='list' and the reader adopt.Atomic('inbox', key=...)")
        if isinstance(decl, Save) and decl.entity == "inbox" and shape != "list":
            raise DeclarationError(f"{where}: Save('inbox') writes a whole list-file inbox: declare "
                                   "shape='list'; one message into per-message files is Save('message', key=...)")
        if not isinstance(decl, Atomic) and type(decl) not in kind.verbs:
            raise DeclarationError(f"{where}: {verb}({decl.entity!r}) is not something the federation does: "
                                   f"{decl.entity} takes {' or '.join(v.__name__ for v in kind.verbs)}")
        try:
            signature = inspect.signature(fn)
        except (TypeError, ValueError):
            signature = None
        if kind.keyed:
            if decl.key is None:
                owner = {"message": "recipient", "session": "session id"}.get(decl.entity, "agent")
                raise DeclarationError(f"{where}: {verb}({decl.entity!r}) needs key=: the parameter naming "
                                       f"the {owner}")
            if signature is not None and decl.key not in signature.parameters:
                raise DeclarationError(f"{where}: key={decl.key!r} is not a parameter of {fname}"
                                       f"{signature}")
        elif decl.key is not None:
            raise DeclarationError(f"{where}: key={decl.key!r}: {decl.entity} is one document for everyone, "
                                   "it has no key")
        glob = getattr(decl, "into", None) or getattr(decl, "source", None)
        if glob is not None:
            arg = "into" if isinstance(decl, Load) else "source"
            if glob not in vars(module) or callable(vars(module)[glob]):
                raise DeclarationError(f"{where}: {arg}={glob!r} is not a module global of {module.__name__}")
            if kind.keyed and not isinstance(vars(module)[glob], dict):
                raise DeclarationError(f"{where}: {arg}={glob!r}: a keyed cache is a dict global keyed by "
                                       f"{decl.key!r}; {module.__name__}.{glob} is a "
                                       f"{type(vars(module)[glob]).__name__}")
        written_param = None if isinstance(decl, Atomic) else _check_shape(where, fn, fname, decl, signature)
        owner_of = cls._owner_getter(signature, decl.key)
        records = "id" if shape == "list" else kind.records
        spec = Spec(entity=kind.table, kind="read" if isinstance(decl, (Load, Atomic)) else "write",
                    key=(lambda *a, **k: owner_of(a, k)) if decl.key else None, records=records,
                    document=decl.entity if not kind.keyed else None)
        return cls(fname, decl, decl.entity, kind, signature, spec, owner_of, written_param)

    @staticmethod
    def _owner_getter(signature: inspect.Signature | None, key: str | None) -> Callable[[tuple, dict], str | None]:
        if key is None:
            return lambda args, kwargs: None
        if signature is None:  # a builtin without a signature: the key is its first argument
            return lambda args, kwargs: kwargs[key] if key in kwargs else args[0]

        def owner(args: tuple, kwargs: dict) -> str:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            return bound.arguments[key]

        return owner

    def owner(self, args: tuple, kwargs: dict) -> str | None:
        """The key argument of this call (a TypeError when the call does not fit the function: the caller's)."""
        try:
            return self.owner_of(args, kwargs)
        except (KeyError, IndexError):
            raise TypeError(f"{self.name}() was called without its {self.decl.key!r} argument") from None


# ---------------------------------------------------------------------------
# one call


class _Call:
    """One call of a declared function, under its document's lock."""

    def __init__(self, adoption: _Adoption, plan: _Plan, wrapped: Callable, args: tuple, kwargs: dict,
                 owner: str | None, mode: tuple[Phase, float]):
        self.a, self.plan, self.wrapped, self.owner = adoption, plan, wrapped, owner
        self.args, self.kwargs = args, kwargs
        self.phase, self.sample = mode
        self.decl = plan.decl

    def run(self) -> Any:
        # the store first, as for the project's own code: the schema exists before either side writes, so a
        # new federation's database is known to need no backfill (its files come later)
        self._store = None if self.phase is Phase.FILES_ONLY else candidate(int(self.phase))
        if isinstance(self.decl, Load):
            return self.load()
        if isinstance(self.decl, Claim):
            return self.claim()
        if self.decl.shape == "list":
            return self.save_list()
        if self.decl.source is not None:
            return self.save_document() if not self.plan.kind.keyed else self.save_keyed_source()
        if self.plan.entity == "polls":
            return self.save_written_polls()
        if self.plan.entity == "message":
            return self.save_written_messages()
        return self.save_written_record()

    # -- helpers -------------------------------------------------------------------
    @property
    def tree(self) -> _files.Tree:
        return core.tree()

    def store(self) -> Any:
        return self._store

    def sampled(self) -> bool:
        return self.sample >= 1.0 or (self.sample > 0.0 and random.random() < self.sample)

    def publish(self, control: Outcome, other: Outcome | None, compare: bool = False) -> None:
        obs = Observation(self.plan.name, self.plan.spec, self.phase, self.args, self.kwargs, control, other)
        if compare and other is not None and other.error is None and control.error is None:
            self.a.experiment.compare(obs)
        self.a.experiment.publish(obs)

    def call_theirs(self, *, retry_torn: bool = False) -> Any:
        """The adopter's function; a read that meets a file torn by a non-atomic writer is re-read briefly."""
        if not retry_torn:
            return self.wrapped(*self.args, **self.kwargs)
        failed: ValueError | None = None
        for pause in (0.0, *_files.TORN_PAUSES):
            if pause:  # never sleep(0): on a loaded machine it gives the core away for a whole time slice
                time.sleep(pause)
            try:
                value = self.wrapped(*self.args, **self.kwargs)
            except ValueError as exc:  # json.JSONDecodeError: a file caught mid-write (or really corrupt)
                failed = exc
                continue
            if failed is not None:
                _files.note_torn(self.document_name(), recovered=True)
            return value
        _files.note_torn(self.document_name(), recovered=False, error=failed)
        raise failed  # still unreadable: the adopter's own exception, as without the shim

    def document_name(self) -> str:
        """The legacy document of this call, below the root (where a torn read is counted)."""
        tree = self.tree
        try:
            if not self.plan.kind.keyed:
                path = tree.polls_file
            elif self.decl.shape == "list":
                path = tree.node(self.owner) / LIST_INBOX
            elif self.plan.kind.document == "message":
                path = tree.inbox(self.owner)
            else:
                path = _document_path(tree, self.plan.kind.document, self.owner)
            return os.path.relpath(path, tree.root)
        except Exception:  # noqa: BLE001 - an odd key: the function's name says where
            return f"{self.a.name}.{self.plan.name}"

    def global_value(self, name: str) -> Any:
        return getattr(self.a.module, name)

    # -- Load ----------------------------------------------------------------------
    @property
    def base_key(self) -> Any:
        """The name of this call's document among the thread's bases."""
        if not self.plan.kind.keyed:
            return self.plan.entity
        return ("inbox-list" if self.decl.shape == "list" else self.plan.entity, self.owner)

    def view(self, doc: Any) -> Any:
        """*doc* read by the adopter's function, as the database shows it (for comparisons)."""
        if self.decl.shape == "list":
            doc = _unread(doc)
        return _legacy_view(self.plan.entity, self.owner, doc)

    def cached(self) -> Any:
        """The document in the ``into`` global after the adopter's load (a keyed cache: its entry)."""
        into = self.decl.into
        value = self.global_value(into)
        if self.plan.kind.keyed:
            return value.get(self.owner) if isinstance(value, dict) else None
        return value

    def files_value(self) -> tuple[Any, Any]:
        """(what the adopter's function returned, the document it read)."""
        returned = self.call_theirs(retry_torn=True)
        return returned, (self.cached() if self.decl.into else returned)

    def db_load(self, store: Any) -> Any:
        return _db_load(store, self.plan.entity, self.owner)

    def backfill_list(self) -> None:
        """A list-file inbox's unread messages that the database has never had (written in phase 1, before
        any backfill) are put into it, under the inbox's lock: from phase 2 on, nothing only the file holds
        is left out of the database's inbox.  A message the database has (claimed or not) is left as it is."""
        path = self.tree.node(self.owner) / LIST_INBOX
        try:
            listed = _read_doc(path, list, [], self.tree.root)
        except Exception:  # noqa: BLE001 - unreadable: the adopter's own read says so; nothing is inserted
            return
        unread = [m for m in listed if isinstance(m, dict) and isinstance(m.get("id"), str) and not _is_read(m)]
        if not unread:
            return
        store = self.store()
        if {m["id"] for m in unread} <= {m["id"] for m in store.load_inbox(self.owner)}:
            return
        from .stores import sqltext as _sql

        sql = _sql.insert(MESSAGES, "DO NOTHING")
        rows = [MESSAGES.row_of(MESSAGES.record(m, fallback={"recipient": self.owner})) for m in unread]
        store.db.write(lambda tx: tx.executemany(sql, rows))

    def load(self) -> Any:
        into = self.decl.into
        if self.decl.shape == "list" and self.phase is not Phase.FILES_ONLY:
            self.backfill_list()
        if self.phase is Phase.FILES_ONLY or self.phase is Phase.FILES_THEN_DB:
            t0 = time.perf_counter()
            returned, doc = self.files_value()
            if self.phase is Phase.FILES_THEN_DB and self.sampled():
                files = Outcome(FILES, self.view(doc), seconds=time.perf_counter() - t0)
                self.publish(files, Outcome.run(DB, self.db_load, (self.store(),), {}, catch=True), compare=True)
            raw = None
            if self.phase is Phase.FILES_ONLY and not self.plan.kind.keyed and into:
                with contextlib.suppress(Exception):  # what the adopter's load just read, under the same lock
                    raw = _files.read_regular(self.tree.polls_file, root=self.tree.root)
            self.a.remember(self.base_key, doc, raw=raw)
            return returned
        # phase 3: the database answers; the adopter's function (the files) is the shadow
        store = self.store()
        db = Outcome.run(DB, self.db_load, (store,), {}, catch=False)
        returned = None
        self.sampled_run = self.sampled()
        if self.sampled_run:
            t0 = time.perf_counter()
            try:
                returned, doc = self.files_value()
            except Exception as exc:  # noqa: BLE001 - the shadow side never fails the call
                files = Outcome(FILES, error=exc, seconds=time.perf_counter() - t0)
            else:
                files = Outcome(FILES, self.view(doc), seconds=time.perf_counter() - t0)
            self.publish(db, files, compare=True)
        value = db.value
        self.a.remember(self.base_key, value)
        if into:  # after the shadow read, which set it from the files
            if not self.plan.kind.keyed:
                setattr(self.a.module, into, _copy(value))
                return getattr(self.a.module, into)
            cache = self.global_value(into)
            if value is None:  # no record in the database: the cache holds what the adopter's load makes of it
                if not self.sampled_run:
                    with contextlib.suppress(Exception):
                        returned = self.call_theirs(retry_torn=True)
                return returned
            cache[self.owner] = _copy(value)
            return cache[self.owner]
        return value

    # -- Save of a module global: a delta against what this thread loaded ----------------
    def save_document(self) -> Any:
        entity, source = self.plan.entity, self.decl.source
        mine = self.global_value(source)
        frozen_mine, frozen_base = _freeze(mine), self.a.frozen(entity)
        if frozen_mine == frozen_base:
            return None  # unchanged since the load (the same bytes): nothing to write
        raw = self.a.raw(entity) if self.phase is Phase.FILES_ONLY else None
        if raw is not None and _files.read_regular(self.tree.polls_file, root=self.tree.root) == raw:
            # phase 1, and the file is byte for byte what this thread loaded: the merge is the caller's document
            returned = self.wrapped(*self.args, **self.kwargs)
            self.a.remember(entity, mine, frozen=frozen_mine)
            return returned
        changes = delta({} if frozen_base is _ABSENT else _thaw(frozen_base), mine)
        if not changes:
            return None
        returned = None

        def files_side() -> Any:
            current = _read_doc(self.tree.polls_file, dict, {}, self.tree.root)
            merged = patch(current, changes, in_place=True)  # just read: no one else holds it
            setattr(self.a.module, source, merged)  # what the adopter's function writes: theirs, merged
            try:
                return self.wrapped(*self.args, **self.kwargs)
            finally:
                setattr(self.a.module, source, mine)

        if self.phase is Phase.FILES_ONLY:
            returned = files_side()
        else:
            store = self.store()

            def db_side() -> None:
                store.atomic(lambda: store.save_polls(patch(store.load_polls(), changes, in_place=True)))

            sides = {FILES: files_side, DB: db_side}
            first = Outcome.run(self.phase.authority, sides[self.phase.authority], (), {}, catch=False)
            other = Outcome.run(self.phase.shadow, sides[self.phase.shadow], (), {}, catch=True)
            self.publish(first, other)
            returned = first.value if self.phase is Phase.FILES_THEN_DB else other.value
        self.a.remember(entity, mine, frozen=frozen_mine)
        return returned

    # -- Save of a keyed cache entry (``source=`` a dict global keyed by the key) ----------------
    def save_keyed_source(self) -> Any:
        source, kind = self.decl.source, self.plan.kind.document
        cache = self.global_value(source)
        mine = cache.get(self.owner) if isinstance(cache, dict) else None
        if not isinstance(mine, dict):  # nothing cached for this key: what the adopter's function writes
            return self.save_written_record()
        changes = delta(self.a.base(self.base_key, {}) or {}, mine)
        if not changes:
            return None
        path = _document_path(self.tree, kind, self.owner)

        def files_side() -> Any:
            current = _read_doc(path, dict, None, self.tree.root) or {}
            merged = patch(current, changes, in_place=True)
            cache[self.owner] = merged  # what the adopter's function writes: theirs, merged
            try:
                return self.wrapped(*self.args, **self.kwargs)
            finally:
                cache[self.owner] = mine

        if self.phase is Phase.FILES_ONLY:
            returned = files_side()
        else:
            sides = {FILES: files_side, DB: lambda: self.db_merge(changes)}
            first = Outcome.run(self.phase.authority, sides[self.phase.authority], (), {}, catch=False)
            other = Outcome.run(self.phase.shadow, sides[self.phase.shadow], (), {}, catch=True)
            self.publish(first, other)
            returned = first.value if self.phase is Phase.FILES_THEN_DB else other.value
        self.a.remember(self.base_key, mine)
        return returned

    def db_merge(self, changes: list) -> None:
        """The database's record of this call's keyed document, with *changes* applied."""
        from .transfer.rows import document_rows
        from .transfer.sync import repair_documents

        store, kind = self.store(), self.plan.kind.document
        current = self.db_load(store)
        merged = patch(_copy(current) if isinstance(current, dict) else {}, changes, in_place=True)
        rows = document_rows(self.tree, kind, self.owner, merged)
        if rows.invalid:
            bad = rows.invalid[0]
            raise AdoptedWriteError(f"{bad['path']}: {bad['reason']}: the database keeps its record")
        store.db.write(lambda tx: repair_documents(tx, rows, {(kind, self.owner)}, _clock.now()))

    # -- Save of a whole list-file inbox (``shape="list"``): a delta by message id ----------------
    def save_list(self) -> Any:
        path = self.tree.node(self.owner) / LIST_INBOX
        before = _Snapshot.of(path, self.tree.root)
        before_list = _parse_or_none(before.files[path.name])
        if not isinstance(before_list, list):
            before_list = [] if before.files[path.name] is None else _read_doc(path, list, [], self.tree.root)
        found: dict[str, Any] = {}

        def theirs() -> Any:
            if self.decl.source is not None:  # a keyed cache of lists: what it holds is what is written
                cache = self.global_value(self.decl.source)
                mine = cache.get(self.owner) if isinstance(cache, dict) else None
            else:
                mine = None
            if mine is None and self.plan.written_param is not None:  # what it writes: its argument, as it is
                with contextlib.suppress(KeyError, TypeError):
                    mine = self.plan.argument(self.plan.written_param, self.args, self.kwargs)
                    if not isinstance(mine, list):
                        mine = None
            returned = self.call_theirs()
            written = _read_doc(path, list, [], self.tree.root) if mine is None else mine
            base = self.a.base(self.base_key, None)
            if base is None:  # never loaded here: what the file held is the base
                base = before_list
            old, new = _by_id(base), _by_id(written)
            added = [m for i, m in new.items() if i not in old]
            removed = [i for i in old if i not in new]
            changed = {i: m for i, m in new.items() if i in old and m != old[i]}
            merged, seen = [], set()
            for m in before_list:
                mid = m.get("id") if isinstance(m, dict) else None
                if mid in removed:
                    continue
                merged.append(changed.get(mid, m))
                seen.add(mid)
            merged += [m for m in added + list(changed.values()) if m["id"] not in seen]
            if merged != written:
                _files.atomic_write_json(path, merged, root=self.tree.root)
            found.update(added=added, read=[i for i in removed if not _is_read(old[i])] +
                         [i for i, m in changed.items() if _is_read(m) and not _is_read(old[i])])
            self.a.remember(self.base_key, merged)
            return returned

        def to_db() -> None:
            store = self.store()
            added = [MESSAGES.record(m, fallback={"recipient": self.owner}) for m in found.get("added", ())
                     if not _is_read(m)]
            read = found.get("read", [])

            def apply() -> None:
                for m in added:
                    store.save_message(m)
                if read:
                    store.claim_inbox(self.owner, ids=list(read))

            if added or read:
                store.atomic(apply)

        if self.phase is Phase.FILES_ONLY:
            return theirs()
        return self.written(before, to_db, run=theirs)

    # -- Save of what the function wrote ---------------------------------------------------
    def written(self, before: _Snapshot, to_db: Callable[[], None], run: Callable[[], Any] | None = None) -> Any:
        """Run the adopter's function and put what it wrote into the database, in the phase's order."""
        run = run or self.call_theirs
        if self.phase is Phase.FILES_ONLY:
            return run()
        if self.phase is Phase.FILES_THEN_DB:
            files = Outcome.run(FILES, run, (), {}, catch=False)
            self.publish(files, Outcome.run(DB, to_db, (), {}, catch=True))
            return files.value
        # phase 3: the record exists only once their function wrote it, so the database decides after it:
        # if the database refuses, the files are put back as they were and the call fails
        try:
            files = Outcome.run(FILES, run, (), {}, catch=False)
        except BaseException:
            before.restore()
            raise
        try:
            db = Outcome.run(DB, to_db, (), {}, catch=False)
        except BaseException:
            before.restore()
            raise
        self.publish(db, files)
        return files.value

    def save_written_record(self) -> Any:
        """A keyed document the function wrote whole: merged as a delta against what this thread loaded
        (into the file as it was under the lock, and the database's record), so a concurrent save of
        another field or role is kept."""
        kind = self.plan.kind.document
        path = _document_path(self.tree, kind, self.owner)
        before = _Snapshot.of(path, self.tree.root)
        merge: dict[str, Any] = {}

        def theirs() -> Any:
            returned = self.call_theirs()
            base = self.a.base(self.base_key, None)  # after the call: a load inside it counts
            if isinstance(base, dict):
                raw = before.files[path.name]
                current = _parse_or_none(raw)
                written = _read_doc(path, dict, None, self.tree.root)
                if isinstance(written, dict):
                    changes = delta(base, written)
                    merge["changes"] = changes
                    if isinstance(current, dict):
                        merged = patch(current, changes, in_place=True)
                        if merged != written:
                            _files.atomic_write_json(path, merged, root=self.tree.root)
                        written = merged
                    self.a.remember(self.base_key, written)
            return returned

        def to_db() -> None:
            if self.phase is Phase.DB_THEN_FILES and "changes" in merge:
                self.db_merge(merge["changes"])  # the database's record, with what this caller changed
            else:
                _files_to_db(self.store(), self.tree, [path], {(kind, self.owner)})

        if self.phase is Phase.FILES_ONLY:
            return theirs()
        return self.written(before, to_db, run=theirs)

    def save_written_polls(self) -> Any:
        if self.phase is Phase.FILES_ONLY:
            return self.call_theirs()
        path = self.tree.polls_file
        before = _Snapshot.of(path, self.tree.root)
        old = _files.read_json(path, dict, {}, root=self.tree.root)

        def to_db() -> None:
            changes = delta(old, _files.read_json(path, dict, {}, root=self.tree.root))
            if changes:
                store = self.store()
                store.atomic(lambda: store.save_polls(patch(store.load_polls(), changes, in_place=True)))

        return self.written(before, to_db)

    def save_written_messages(self) -> Any:
        if self.phase is Phase.FILES_ONLY:
            return self.call_theirs()
        inbox = self.tree.inbox(self.owner)
        before = _Snapshot.of_folder(inbox, self.tree.root)

        def to_db() -> None:
            new = sorted(_json_names(inbox, self.tree.root) - set(before.files))
            messages = []
            for name in new:
                data = _files.read_json(inbox / name, root=self.tree.root)
                if data is None:
                    continue
                messages.append(MESSAGES.record(data, fallback={"id": _layout.stem(name), "recipient": self.owner}))
            store = self.store()
            store.atomic(lambda: [store.save_message(m) for m in messages])

        return self.written(before, to_db)

    # -- Claim -------------------------------------------------------------------------------
    def claim(self) -> Any:
        agent = self.owner
        inbox = self.tree.inbox(agent)
        if self.phase is Phase.FILES_ONLY:
            return self.call_theirs()
        store = self.store()
        if self.phase is Phase.FILES_THEN_DB:
            before = _json_names(inbox, self.tree.root)
            t0 = time.perf_counter()
            returned = self.call_theirs()
            files = Outcome(FILES, _legacy_view("inbox", agent, returned), seconds=time.perf_counter() - t0)
            claimed = sorted(_layout.stem(name) for name in before - _json_names(inbox, self.tree.root))
            db = Outcome.run(DB, store.claim_inbox, (agent,), {"ids": claimed}, catch=True)
            self.publish(files, db, compare=True)
            return returned
        # phase 3: the database claims; the adopter's function then clears the same messages from the files
        before = _Snapshot.of_folder(inbox, self.tree.root)
        db = Outcome.run(DB, store.claim_inbox, (agent,), {}, catch=False)
        claimed = {m["id"] for m in db.value}
        files = Outcome.run(FILES, self.call_theirs, (), {}, catch=True)
        # what the database did not claim stays unread in the files; what it claimed is gone from them
        before.restore(only=[n for n in before.files if _layout.stem(n) not in claimed])
        for mid in claimed:
            with contextlib.suppress(Exception):
                _files.remove(inbox / _layout.document_name(mid), root=self.tree.root)
        if files.error is None:
            files.value = _legacy_view("inbox", agent, files.value)
        self.publish(db, files, compare=True)
        return db.value


# ---------------------------------------------------------------------------
# files before a call, to put back when the database refuses


def _json_names(folder: Path, root: Path) -> set[str]:
    """The message files of *folder*, through the gate: regular files only (a link or FIFO there is never
    snapshotted, restored or removed), none when the folder is missing or is a link."""
    try:
        return {n for n, st in _files.scan_dir(folder, root=root)
                if _layout.is_document_name(n) and stat.S_ISREG(st.st_mode)}
    except (CorruptFileError, NotADirectoryError):
        return set()


def _document_path(tree: _files.Tree, kind: str, owner: str) -> Path:
    return _layout.document_file(tree, kind, owner, owner)


@dataclasses.dataclass
class _Snapshot:
    """The bytes of a file (None: absent), or of every message file of a folder."""

    path: Path
    files: dict[str, bytes | None]
    root: Path
    folder: bool = False

    @classmethod
    def of(cls, path: Path, root: Path) -> "_Snapshot":
        return cls(path, {path.name: _read_bytes(path, root)}, root)

    @classmethod
    def of_folder(cls, folder: Path, root: Path) -> "_Snapshot":
        return cls(folder, {n: _read_bytes(folder / n, root) for n in _json_names(folder, root)}, root, folder=True)

    def restore(self, only: list[str] | None = None) -> None:
        """Put the files back as they were (a file that did not exist is removed); new message files go."""
        folder = self.path if self.folder else self.path.parent
        names = list(self.files) if only is None else only
        for name in names:
            _put_bytes(folder / name, self.files.get(name), self.root)
        if self.folder and only is None:
            for name in _json_names(folder, self.root) - set(self.files):
                _put_bytes(folder / name, None, self.root)


def _read_doc(path: Path, expect: type, default: Any, root: Path) -> Any:
    """A legacy document through the gate (no link followed, only a regular file, size bounded), parsed as
    the adopter's own function parses it; one that does not parse at once (torn, too deep, not *expect*)
    is read again by the gate's bounded reader, which waits a torn file out or says what is wrong."""
    raw = _files.read_regular(path, root=root)
    if raw is None:
        return default
    data = _parse_or_none(raw)
    if isinstance(data, expect):
        return data
    return _files.read_json(path, expect, default, root=root)


def _parse_or_none(raw: bytes | None) -> Any:
    """*raw* parsed (the bytes the adopter's own function reads as they are), or None: absent, torn, too
    deep (the callers then read the file through the gate, which says what is wrong with it)."""
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        return None


def _read_bytes(path: Path, root: Path) -> bytes | None:
    """The bytes of a legacy file through the gate (no link followed, never a FIFO); None when absent."""
    return _files.read_regular(path, root=root)


def _put_bytes(path: Path, raw: bytes | None, root: Path) -> None:
    if raw is None:
        _files.remove(path, root=root)
        return
    _files.write_bytes(path, raw, root=root)  # a temp file made with O_EXCL + rename, through the gate


def _files_to_db(store: Any, tree: _files.Tree, paths: list[Path], docs: set[tuple[str, str]]) -> None:
    """Make the database rows of the legacy documents *docs* equal what their files hold now."""
    from .transfer.rows import read_files
    from .transfer.sync import repair_documents

    rows = read_files(tree, paths)
    if rows.invalid:
        bad = rows.invalid[0]
        raise AdoptedWriteError(f"{bad['path']}: {bad['reason']}: the database keeps its record")
    store.db.write(lambda tx: repair_documents(tx, rows, docs, _clock.now()))


# ---------------------------------------------------------------------------
# the public calls

_adopted: dict[str, _Adoption] = {}
_install_lock = threading.Lock()


def install(module: Any, declarations: Mapping[str, Any]) -> None:
    """Adopt the shim on the already imported *module*: wrap each declared function (idempotent).

    Every declaration is checked first (against the function's signature and, where its source
    shows it, the shape it writes); one that does not fit raises :class:`DeclarationError` naming the
    function (and the parameter), and then nothing is wrapped.  Module-level names elsewhere in the
    package bound to a declared function before now are patched too.  In phase 4 it raises
    :class:`AdoptedPhaseError`: adopted code is not run there.
    """
    if not isinstance(declarations, Mapping):
        raise DeclarationError(f"{getattr(module, '__name__', module)!r}: declarations must be a mapping "
                               "{function name: adopt.Load/Save/Claim(...)}")
    with _install_lock:
        name = module.__name__
        if name in _adopted:
            return
        adoption = _Adoption(module, declarations)  # checks every declaration before anything is wrapped
        if rollout.mode()[0] == 4:
            raise _phase_4_refusal(f"adopting {name}")
        adoption.wrap()  # and patches the package's aliases of the wrapped functions (or refuses, unwrapped)
        _adopted[name] = adoption
    rollout.announce_adopted(name)


def install_when_imported(module_name: str, declarations: Mapping[str, Any]) -> None:
    """Adopt the shim on *module_name* as soon as it is imported (at once if it already is).

    The one safe order: call it before anything imports the module.  A module of
    the same package that bound ``from pkg.core import save_polls`` earlier is
    patched by :func:`install` too (or the install is refused, naming it); a name
    bound outside the package, or inside a class or closure, cannot be found.
    """
    wrapt.register_post_import_hook(lambda module: install(module, declarations), module_name)


def uninstall(module: Any) -> None:
    """Put the module's original functions back."""
    with _install_lock:
        adoption = _adopted.pop(module.__name__, None)
    if adoption is None:
        return
    adoption.unwrap()
    rollout.announce_adopted(module.__name__, adopted=False)


def installed(module: Any) -> bool:
    return module.__name__ in _adopted

