"""The dual-write transition shim.

A generic "old store / new store" experiment runner applied to functions by
name: :func:`install` wraps the ``load_*``/``save_*`` functions of a module
with wrapt so that each call is routed by the rollout phase — files only,
files then database, database then files, database only — with shadow reads
compared (by the caller's differ, or plain equality) and every mismatch
published as a structlog event.

It knows nothing about polls or inboxes: the module describes its functions
(``SHIM_SPEC``) and the caller supplies the candidate store, the phase and
the locks.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, ContextManager, Iterable, Mapping

import wrapt

from ._compare import Differ, delta, patch, whole_record_diff
from ._experiment import DB, FILES, Experiment, Mismatch, Observation, Outcome, Phase, Spec, SpecError
from ._log import library_logger

__all__ = ["install", "install_when_imported", "uninstall", "installed", "Spec", "Experiment", "Phase", "Observation",
           "Outcome", "Mismatch", "SpecError", "Differ", "whole_record_diff", "delta", "patch", "FILES", "DB",
           "library_logger"]

_installed: dict[str, Experiment] = {}


def _spec_of(name: str, raw: Any) -> Spec:
    if isinstance(raw, Spec):
        return raw
    raw = dict(raw or {})
    raw.setdefault("entity", name.split("_", 1)[-1])
    raw.setdefault("kind", "read" if name.startswith("load_") else "write")
    if "ignore" in raw:
        raw["ignore"] = frozenset(raw["ignore"])
    return Spec(**raw)


def install(
    module: Any,
    *,
    candidate: Callable[[int], Any],
    mode: Callable[[], tuple[int, float]],
    lock: Callable[[str], ContextManager] | None = None,
    spec: Mapping[str, Any] | None = None,
    observers: Iterable[Callable[[Observation], None]] = (),
    differ: Differ = whole_record_diff,
) -> Experiment:
    """Wrap the persistence functions of *module* (idempotent).

    candidate(phase) -> the object whose methods of the same names are the
    database side; mode() -> (phase, shadow_sample), the phase a :class:`Phase`
    or its number, 1 meaning "off"; lock(name) -> a context manager held across
    both sides in phases 2-3; spec -> {function name: Spec or dict}; default
    ``module.SHIM_SPEC``, or every ``load_*``/``save_*`` function of the module;
    observers -> callables given every :class:`Observation` of a dual-phase
    call after its events are logged (counters; they must not block);
    differ(control_record, candidate_record, spec.ignore) -> [(field path,
    control value, candidate value)], [] when they agree: what a shadow
    comparison reports (default :func:`whole_record_diff`: equal or one
    ``"(value)"`` difference; a differ that raises makes the call not compared).
    """
    key = module.__name__
    if key in _installed:
        return _installed[key]
    if spec is None:
        spec = getattr(module, "SHIM_SPEC", None)
    if spec is None:
        spec = {n: {} for n in dir(module) if n.startswith(("load_", "save_")) and callable(getattr(module, n))}
    exp = Experiment(module, candidate, mode, lock, observers, differ)
    specs = {name: _spec_of(name, raw) for name, raw in spec.items()}
    for name, s in specs.items():
        _check_fits(module, name, s)  # every spec before anything is wrapped
    for name, s in specs.items():
        original = getattr(module, name)
        exp.originals[name] = original
        wrapt.wrap_function_wrapper(module, name, exp.wrapper(name, s))
    _installed[key] = exp
    return exp


def _check_fits(module: Any, name: str, spec: Spec) -> None:
    """Refuse a spec its function cannot honour, naming the function."""
    fn = getattr(module, name, None)
    if not callable(fn):
        raise SpecError(f"{module.__name__}.{name}: no such function to wrap")
    if spec.document and spec.kind == "write":
        try:
            params = inspect.signature(fn).parameters.values()
        except (TypeError, ValueError):
            return  # no signature to check (a builtin): the call checks
        takes = any(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL, p.KEYWORD_ONLY)
                    for p in params)
        if not takes:
            raise SpecError(f"{module.__name__}.{name}: a whole-document save (document={spec.document!r}) takes "
                            "the document as its first argument, and this function takes none; a function that "
                            "saves a module global is declared with federation.adopt.Save(..., source=NAME)")


def install_when_imported(module_name: str, **hooks: Any) -> None:
    """Install on *module_name* as soon as it is imported (a post-import hook).

    For a ``core.py`` that cannot be edited: call this before anything imports
    it, so no caller can hold an unpatched ``from core import save_polls``.
    If the module is already imported, it is patched at once.
    """
    wrapt.register_post_import_hook(lambda module: install(module, **hooks), module_name)


def uninstall(module: Any) -> None:
    """Put the original functions back."""
    exp = _installed.pop(module.__name__, None)
    if exp is None:
        return
    for name, original in exp.originals.items():
        setattr(module, name, original)


def installed(module: Any) -> Experiment | None:
    return _installed.get(module.__name__)
