"""What a declaration means for its function: the checks of its signature and of the shape its source writes."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
from typing import Any, Callable

from shim import Spec

from ..domain.entities import document_lock
from ._declare import Atomic, Claim, DeclarationError, ENTITIES, LIST_INBOX, Load, SHAPES, Save, _Kind


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
    #: the lock of this call's document, by its key (one name for a document without a key)
    lock_of: Callable[[str | None], str] = dataclasses.field(default=lambda owner: "", repr=False)
    #: the value of written_param in a call (a KeyError or TypeError when it has none)
    written_of: Callable[[tuple, dict], Any] | None = dataclasses.field(default=None, repr=False)

    def __post_init__(self) -> None:
        document = self.kind.document
        if self.kind.keyed:
            self.lock_of = lambda owner: document_lock(document, owner or "")
        else:
            name = document_lock(document)
            self.lock_of = lambda owner: name
        if self.written_param is not None:
            self.written_of = self._getter(self.signature, self.written_param)

    def argument(self, name: str, args: tuple, kwargs: dict) -> Any:
        """The value of parameter *name* in this call (a KeyError when it has none)."""
        if name == self.written_param and self.written_of is not None:
            return self.written_of(args, kwargs)
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
        return _Plan._getter(signature, key)

    @staticmethod
    def _getter(signature: inspect.Signature | None, key: str | None) -> Callable[[tuple, dict], Any]:
        """The value of parameter *key* in a call (KeyError, IndexError or TypeError when it has none)."""
        if key is None:
            return lambda args, kwargs: None
        if signature is None:  # a builtin without a signature: the key is its first argument
            return lambda args, kwargs: kwargs[key] if key in kwargs else args[0]

        def owner(args: tuple, kwargs: dict) -> str:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            return bound.arguments[key]

        params = list(signature.parameters.values())
        plain = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        index = next((i for i, p in enumerate(params) if p.name == key), None)
        if index is None or any(p.kind not in plain for p in params[:index + 1]) \
                or any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params):
            return owner

        def positional(args: tuple, kwargs: dict) -> str:
            # the common call, fn(agent, ...) with every argument by position, within the signature: no bind
            if not kwargs and index < len(args) <= len(params):
                return args[index]
            return owner(args, kwargs)

        return positional

    def owner(self, args: tuple, kwargs: dict) -> str | None:
        """The key argument of this call (a TypeError when the call does not fit the function: the caller's)."""
        try:
            return self.owner_of(args, kwargs)
        except (KeyError, IndexError):
            raise TypeError(f"{self.name}() was called without its {self.decl.key!r} argument") from None
