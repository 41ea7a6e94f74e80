"""This process's control-plane runtimes, one per federation root it serves, and the shim's observer.

:func:`call_mode` is what the shim asks for the phase of each call: the
:class:`~federation.rollout._runtime.Runtime` of the call's federation
(:func:`runtime_for`) answers, and :func:`observe` counts the call in that
same federation's tally.  Two federations served by one process each keep
their flag, counts and announcement (issue 28).
"""

from __future__ import annotations

import atexit
import collections
import os
import threading
from pathlib import Path
from typing import Any

from .. import config
from ._runtime import Runtime

#: Most federations one process keeps a runtime for at once (each has its announcement thread); the one used
#: longest ago is retired (its counts written, its announcement withdrawn) when a further one is served.
MAX_RUNTIMES = 8

_registry: "collections.OrderedDict[Path, Runtime]" = collections.OrderedDict()  # by root, least recent first
_registry_lock = threading.Lock()
_last: tuple[config.Settings, Runtime] | None = None  # the hot path: the settings asked for last, and theirs
_first = Runtime()  # bound to the first federation asked for (and what RUNTIME names before any)
_calling = threading.local()  # the runtime that gave this thread's call in flight its phase (see observe)


def runtime_for(s: config.Settings) -> Runtime:
    """The control-plane runtime of the federation of *s* (one per federation root and process): two
    federations served by one process each have their flag, counts and announcement (issue 28)."""
    global _last
    last = _last
    if last is not None and last[0] is s:
        return last[1]
    retired: list[Runtime] = []
    with _registry_lock:
        runtime = _registry.get(s.root)
        if runtime is None:
            first = _first
            if first not in _registry.values() and not first._closed and \
                    (first._settings is None or first._settings.root == s.root):
                runtime = first
            else:
                runtime = Runtime()
            _registry[s.root] = runtime
            while len(_registry) > MAX_RUNTIMES:
                retired.append(_registry.popitem(last=False)[1])
        else:
            _registry.move_to_end(s.root)
        _last = (s, runtime)
    for old in retired:
        old.retire()
    return runtime


def call_mode(s: config.Settings) -> tuple[int, float]:
    """(phase, sample) for the call about to run in the federation of *s*; its counts go to that federation."""
    runtime = runtime_for(s)
    _calling.runtime = runtime
    return runtime.mode(s)


def runtimes() -> list[Runtime]:
    """This process's runtimes, the most recently used last."""
    with _registry_lock:
        kept = list(_registry.values())
    return kept if _first in kept else [_first, *kept]


def current_runtime() -> Runtime:
    """The runtime of the federation this process served last (``rollout.RUNTIME``)."""
    last = _last
    return last[1] if last is not None else _first


def __getattr__(name: str) -> Any:
    if name == "RUNTIME":
        return current_runtime()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _at_exit() -> None:
    for runtime in runtimes():
        runtime.at_exit()


def _after_fork() -> None:
    global _last
    for runtime in runtimes():
        runtime.after_fork()
    _last = None


atexit.register(_at_exit)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


def observe(obs: Any) -> None:
    """The shim's observer: count one dual-phase call (a :class:`shim.Observation`) and keep its mismatches.

    A comparison is one compared call, a mismatch one compared call whose sides
    differed (in one record or more), an error one call whose shadow side
    failed; each side that ran adds its time to its latency histogram.
    """
    runtime = getattr(_calling, "runtime", None) or current_runtime()
    tally = runtime.tally
    phase = int(obs.phase)
    control, candidate = obs.control, obs.candidate
    seconds = {control.side: control.seconds}
    if candidate is not None:
        seconds[candidate.side] = candidate.seconds
    tally.observe(obs.spec.entity, phase, compared=obs.compared, mismatched=bool(obs.mismatches),
                  error=candidate is not None and candidate.error is not None,
                  files_s=seconds.get("files"), db_s=seconds.get("db"))
    if runtime._last_flush is None:  # the first counts of this process: written now, not an interval later
        runtime._wake.set()
    if obs.mismatches:
        authority = obs.phase.authority
        for m in obs.mismatches:
            tally.mismatch(entity=obs.spec.entity, key=m.key, phase=phase, op=obs.name, authority=authority,
                           diff=m.diff)
