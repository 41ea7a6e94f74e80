"""One process's side of the control plane: the phase in effect, its announcement, its counts.

The shim asks ``rollout.call_mode`` for the phase of each call: the
:class:`Runtime` of the call's federation (one per federation root in a
process, :mod:`federation.rollout._runtimes`) answers (:meth:`Runtime.mode`).  The answer is cached: the environment pin is part of
the cached settings, and the live flag is looked at (one ``stat``, and a read
only when the file changed) at most once a second, so a call costs a few
attribute look-ups.  The shim asks once per call, so a call in flight
finishes in the phase it started in.

The first call starts a daemon thread that announces the process in
``control/fleet/`` every few seconds, writes its counts, warns of an unsafe
mix of phases in the fleet, and at exit writes the counts a last time and
withdraws the announcement.  Nothing here ever raises into a caller: an
unreadable flag keeps the phase the process had (an error event says why),
and a read-only or full disk costs the fleet its view of this process
(a warning), not the call.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from .._logging import library_logger

from ..stores import files as _files
from .. import config
from ..errors import ConfigError, CorruptFileError, FederationError
from . import _counts, _default, _fleet, _flag, _io

log = library_logger("federation.rollout")

SOURCES = ("env", "flag", "default")
#: a process reads the fleet to look for an unsafe mix at a phase change and every this many
#: announcements (with 1,000 processes each read is 1,000 files)
MIX_CHECK_EVERY = 10


class Runtime:
    """This process in the control plane of one federation (one per federation root and process:
    :func:`runtime_for`; ``rollout.RUNTIME`` names the one served last)."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._settings: config.Settings | None = None
        self._pinned_all = False
        self._next_check = 0.0
        self._mode: tuple[int, float] = (_flag.DEFAULT_PHASE, _flag.DEFAULT_SAMPLE)
        self.source = "default"
        self._resolved = False
        # what was last seen of the flag file: (root, (mtime_ns, inode, size)) and its value
        self._flag_seen: tuple[Path, tuple[int, int, int]] | None = None
        self._flag: _flag.Flag | None = None
        self._flag_problem: str | None = None
        self._backfilled_root: Path | None = None
        self._default_seen: dict[Path, int] = {}
        self.timings = config.ControlTimings()
        self.tally = _counts.Tally()
        self.agent: str | None = None
        # torn reads counted before (another runtime's), and when a new one was last announced
        self.torn_counted = _files.torn_reads["recovered"] + _files.torn_reads["unreadable"]
        self.torn_at: str | None = None
        # legacy documents found rewritten by no process of the fleet (their stamps disagree), likewise
        self.outside_counted = _files.outside_writes["seen"]
        self.outside_at: str | None = None
        self.adopted: list[str] = []  # modules adopted with federation.adopt (announced: phase 4 refuses them)
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()
        self._flush_lock = threading.Lock()
        self._tick_lock = threading.Lock()  # one tick at a time: the background thread's and the final one
        self._closed = False  # the final tick ran: nothing announces this process again
        self._begin()

    def _begin(self) -> None:
        self.pid = os.getpid()
        self.started = time.time()
        self.started_at = _io.iso(_io.utcnow())
        self.proc_start = _fleet.start_ticks(self.pid)  # tells this process from a later one given its pid
        self._announced_root: Path | None = None
        self._counts_root: Path | None = None
        self._mismatch_lines = 0
        self._reported_pairs: set[tuple] = set()
        self._warned: set[str] = set()
        # None: not yet done in this process, so due at once -- monotonic time counts from the machine's boot,
        # and a 0.0 here would put the first flush an interval after boot (never, in a young machine's first hour)
        self._last_announce: float | None = None
        self._last_mix_check: float | None = None
        self._last_flush: float | None = None
        self._last_maintain: float | None = None  # the counts' retention pass (the first one an interval in)

    # -- the phase of a call -------------------------------------------------------
    def mode(self, s: config.Settings) -> tuple[int, float]:
        """(phase, shadow sample) for the call about to run in the federation of *s* (handed down by the
        composition root, ``federation._wiring``): what the shim asks once per call."""
        if s is self._settings and (self._pinned_all or time.monotonic() < self._next_check):
            return self._mode
        return self._resolve(s)

    def _resolve(self, s: config.Settings) -> tuple[int, float]:
        with self._lock:
            if s is not self._settings:
                if self._settings is None or s.root != self._settings.root:
                    self._flag_seen = None  # another federation: nothing known of its flag
                    self._flag = None
                    self._flag_problem = None
                self._settings = s
                # nothing to look at in the flag: the phase is pinned, and so is the sample (or
                # the pinned phase compares nothing: 1 and 4), e.g. the FEDERATION_USE_DB=0 kill switch
                self._pinned_all = s.phase_pinned and (s.sample_pinned or s.effective_phase in (1, 4))
                self._load_timings()
            old, old_source = self._mode, self.source
            flag = self._flag if self._pinned_all else self._current_flag(s.root)
            if s.phase_pinned:
                phase, source = s.effective_phase, "env"
            elif flag is not None:
                phase, source = flag.phase, "flag"
            elif self._flag_problem is not None and self._resolved:
                phase, source = old[0], self.source  # unreadable: keep the phase this process had
            elif self._flag_problem is not None:
                phase, source = self._fallback_phase(s)
            else:
                phase, source = self._default_phase(s), "default"
            if s.sample_pinned:
                sample = s.shadow_sample
            elif flag is not None:
                sample = flag.sample
            elif self._flag_problem is not None and self._resolved:
                sample = old[1]
            else:
                sample = _flag.DEFAULT_SAMPLE
            self._mode, self.source = (phase, sample), source
            self._next_check = time.monotonic() + self.timings.flag_check
            if self._resolved and (old[0] != phase or old_source != source):
                log.info("rollout_phase_changed", pid=self.pid, agent=self.agent, phase=phase, previous=old[0],
                         source=source)
                self._wake.set()  # announce the new phase now, not at the next refresh
            self._resolved = True
            self._ensure_thread()
            return self._mode

    def _load_timings(self) -> None:
        try:
            self.timings = config.control_timings()
        except ConfigError as exc:
            log.error("rollout_config_invalid", error=str(exc), using="defaults")
            self.timings = config.ControlTimings()
        self.tally.width = int(self.timings.counts_bucket)

    def _current_flag(self, root: Path) -> _flag.Flag | None:
        """The flag, re-read only when its file changed; on a problem, the last good value (or None)."""
        path = _flag.flag_path(root)
        try:
            st = _files.lstat(path, root=root)  # through the gate: control/ or the flag as a link is not followed
            if st is None:
                raise FileNotFoundError(path)
        except CorruptFileError as exc:
            self._problem(f"the live flag {path} cannot be read ({exc.reason})", path)
            return self._flag
        except FileNotFoundError:
            if self._flag is not None:
                self._problem(f"the live flag {path} disappeared", path)
                return self._flag
            self._flag_seen = None
            self._clear_problem(path)
            return None
        except OSError as exc:
            self._problem(f"the live flag {path} cannot be read ({exc.strerror or exc})", path)
            return self._flag
        signature = (st.st_mtime_ns, st.st_ino, st.st_size)
        if self._flag_seen == (root, signature):
            return self._flag
        try:
            flag = _flag.read_flag(root)
        except _flag.FlagError as exc:
            self._flag_seen = (root, signature)  # do not re-read (and re-log) until it changes
            self._problem(str(exc), path)
            return self._flag
        self._flag_seen = (root, signature)
        self._flag = flag
        self._clear_problem(path)
        return flag

    def _default_phase(self, s: config.Settings) -> int:
        """Phase 3, or 1 while the root's legacy files were never backfilled into its database.

        Asked at each look at the flag while the answer is 1 (the operator may migrate meanwhile);
        a backfill is not undone, so once seen the answer stays 3 for this root.  When the database
        cannot be asked, the last answer holds; without one, 1 on a root with legacy data (the files),
        else 3 (:func:`_default.unanswered_phase`).
        """
        if self._backfilled_root == s.root:
            return _flag.DEFAULT_PHASE
        known = self._default_seen.get(s.root)
        if known is not None:
            return known  # a call never waits on the database for this: the background thread asks again
        return self._ask_default(s)

    def _ask_default(self, s: config.Settings) -> int:
        try:
            needs = _default.needs_backfill(s)
        except Exception as exc:  # noqa: BLE001 - never raise into a call
            self._warn_once("rollout_backfill_unknown", root=str(s.root), error=f"{type(exc).__name__}: {exc}")
            answer = self._mode[0] if self._resolved and self.source == "default" else _default.unanswered_phase(s)
            self._default_seen[s.root] = answer  # calls keep it; the background thread asks again
            return answer
        self._default_seen[s.root] = 1 if needs else _flag.DEFAULT_PHASE
        if needs:
            if self._mode[0] != 1 or not self._resolved:
                log.warning("rollout_default_files", root=str(s.root), phase=1,
                            detail="legacy files and a database never backfilled from them: serving the files "
                                   "(phase 1) until `federation migrate` has run; `federation rollout set 1` "
                                   "keeps the fleet there")
            return 1
        self._backfilled_root = s.root
        return _flag.DEFAULT_PHASE

    def _awaiting_backfill(self, s: config.Settings) -> bool:
        """Following the default while the root is not known to be backfilled: asked again at each tick."""
        return self.source == "default" and self._backfilled_root != s.root

    def _fallback_phase(self, s: config.Settings) -> tuple[int, str]:
        """A process starting while the flag is unreadable: the last phase the history recorded, else 1 on a
        root with legacy data (the files: never phase 3 on a flag nobody can read), else 3."""
        with contextlib.suppress(OSError):
            phase = _flag.last_recorded_phase(s.root)
            if phase is not None:
                log.error("rollout_flag_fallback", phase=phase, source="history")
                return phase, "flag"
        phase = _default.unanswered_phase(s)  # asks no database: a call never waits on one for this
        log.error("rollout_flag_fallback", phase=phase, source="default")
        return phase, "default"

    def _problem(self, message: str, path: Path) -> None:
        if message != self._flag_problem:
            log.error("rollout_flag_unreadable", path=str(path), error=message, keeping_phase=self._mode[0]
                      if self._resolved else None, pid=self.pid)
        self._flag_problem = message

    def _clear_problem(self, path: Path) -> None:
        if self._flag_problem is not None:
            log.info("rollout_flag_readable", path=str(path))
        self._flag_problem = None

    def flag_problem(self) -> str | None:
        return self._flag_problem

    # -- the background thread -------------------------------------------------------
    def _ensure_thread(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._thread = threading.Thread(target=self._run, name="federation-rollout", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        woken = False
        while True:
            with contextlib.suppress(Exception):
                self.tick(announce_now=woken)
            if self._closed:
                return  # retired (see runtime_for) or at exit
            woken = self._wake.wait(min(self.timings.fleet_refresh, self.timings.counts_flush))
            self._wake.clear()

    def tick(self, *, final: bool = False, announce_now: bool = False) -> None:
        """Announce, check the fleet, flush counts when due (never raises).

        Works on the federation of this process's last call (its settings), so
        that a process is announced only where it used the federation.
        """
        with self._tick_lock:
            if self._closed:
                return  # withdrawn at exit: a background tick after it must not announce again
            self._closed = final
            self._tick(final=final, announce_now=announce_now)

    def _tick(self, *, final: bool, announce_now: bool) -> None:
        s = self._settings
        if s is None:
            return
        now = time.monotonic()
        if not final and not self._pinned_all and self._awaiting_backfill(s):
            self._ask_default(s)  # outside the lock: calls keep the known answer meanwhile
            self._resolve(s)
        elif not final and not self._pinned_all and now >= self._next_check:
            self._resolve(s)  # the phase the next call would take: what the announcement says
        if self._counts_root is not None and self._counts_root != s.root:
            self._flush(self._counts_root)  # the process moved to another federation (tests do)
        self._counts_root = s.root
        if final or self.tally.dirty and _due(self._last_flush, now, self.timings.counts_flush):
            self._flush(s.root)
            self._last_flush = now
        if final:
            self._withdraw()
            return
        if self._last_maintain is None:  # the first pass after a full interval: a short command never pays for one
            self._last_maintain = now
        if _due(self._last_maintain, now, self.timings.counts_flush * _counts.PASS_EVERY_FLUSHES) \
                and self._writable(s.root):
            self._last_maintain = now
            try:  # control/ kept within its retention while the process runs: a bounded pass
                _counts.maintain(s.root, budget=_counts.PASS_BUDGET)
            except Exception as exc:  # noqa: BLE001 - never into a call; said once until it works again
                self._warn_once("rollout_counts_maintain_failed", root=str(s.root), error=f"{type(exc).__name__}: {exc}")
            else:
                self._warned.discard("rollout_counts_maintain_failed")
        if self._announced_root is not None and self._announced_root != s.root:
            self._withdraw()
        if announce_now or _due(self._last_announce, now, self.timings.fleet_refresh) or \
                self._announced_root is None:
            if self._announce(s.root):
                self._last_announce = now
                # reading the whole fleet costs one file per process: not at every announcement
                if announce_now or _due(self._last_mix_check, now, self.timings.fleet_refresh * MIX_CHECK_EVERY):
                    self._last_mix_check = now
                    self._check_mix(s.root)

    def _writable(self, root: Path) -> bool:
        # never recreate a federation root that is gone (a test's temporary folder, an unmounted disk)
        return _files.root_is_folder(root)

    def _announce(self, root: Path) -> bool:
        if not self._writable(root):
            return False
        doc = {"host": _io.HOST, "pid": self.pid, "agent": self.agent, "program": _program(), "phase": self._mode[0],
               "source": self.source, "sample": self._mode[1], "version": _version(),
               "started_at": self.started_at, "last_seen": _io.iso(_io.utcnow()),
               "proc_start": self.proc_start}
        if self.adopted:
            doc["adopted"] = list(self.adopted)
        torn = _files.torn_reads["recovered"] + _files.torn_reads["unreadable"]
        if torn:  # legacy files seen half-written: a writer outside the shim (status warns)
            doc["torn_reads"] = torn
            if torn > self.torn_counted:  # new ones since the last announcement: when, and where
                self.torn_at = doc["last_seen"]
            if self.torn_at:
                doc["torn_at"] = self.torn_at
                doc["torn_documents"] = dict(_files.torn_files)
        self.torn_counted = torn
        outside = _files.outside_writes["seen"]
        if outside:  # legacy files rewritten by no process of the fleet (clean writes included)
            doc["outside_writes"] = outside
            if outside > self.outside_counted:
                self.outside_at = doc["last_seen"]
            if self.outside_at:
                doc["outside_at"] = self.outside_at
                doc["outside_documents"] = dict(_files.outside_files)
        self.outside_counted = outside
        path = _fleet.fleet_file(root, self.pid)
        try:
            _io.write_atomic(path, _io.dumps(doc))
        except (OSError, FederationError) as exc:  # a linked control/ or fleet/ folder: nothing written through it
            self._warn_once("rollout_announce_failed", path=str(path), error=str(exc))
            return False
        self._warned.discard("rollout_announce_failed")
        if self._announced_root != root:
            self._announced_root = root
            with contextlib.suppress(OSError, FederationError):  # leftovers of processes long gone
                _counts.prune_files(path.parent, _fleet.FORGET_SECONDS, keep=[path], root=root)
        return True

    def _withdraw(self) -> None:
        root, self._announced_root = self._announced_root, None
        if root is not None:
            with contextlib.suppress(OSError, FederationError):
                _files.remove(_fleet.fleet_file(root, self.pid), root=root)

    def _check_mix(self, root: Path) -> None:
        """Log an error when this process and a live one of the fleet are an unsafe pair."""
        try:
            fleet = _fleet.read_fleet(root, self.timings.fleet_timeout)
        except OSError:
            return
        for four, files in _fleet.unsafe_mix(fleet):
            mine = four if four.get("pid") == self.pid and four.get("host") == _io.HOST else \
                files if files.get("pid") == self.pid and files.get("host") == _io.HOST else None
            if mine is None:
                continue
            pair = (four.get("host"), four.get("pid"), files.get("host"), files.get("pid"), four.get("phase"),
                    files.get("phase"))
            if pair in self._reported_pairs:
                continue
            self._reported_pairs.add(pair)
            log.error("rollout_unsafe_mix", phase_4=_fleet.describe(four), files_phase=_fleet.describe(files),
                      detail="a phase-4 process no longer writes the files a phase-1/2 process reads: "
                             "each hides the other's writes")

    def _flush(self, root: Path) -> None:
        # one flush at a time: the thread's and the exit's must not overwrite each other's newer snapshot
        with self._flush_lock:
            self._flush_locked(root)

    def _flush_locked(self, root: Path) -> None:
        if not self._writable(root):
            return
        hours, pending = self.tally.take()
        try:
            for hour, cells in sorted(hours.items()):
                _counts.write_counts(_counts.counts_file(root, hour, self.pid, self.started), self.pid,
                                     self.started_at, self.tally.width, cells)
            self._mismatch_lines = _counts.append_mismatches(_counts.mismatch_file(root, self.pid), pending,
                                                             self._mismatch_lines)
        except (OSError, FederationError) as exc:  # FederationError: a linked control folder, nothing written
            self.tally.give_back(hours, pending)
            self._warn_once("rollout_counts_flush_failed", root=str(root), error=str(exc))
        else:
            self._warned.discard("rollout_counts_flush_failed")

    def _warn_once(self, event: str, **fields: Any) -> None:
        """A failing disk is said once (until it works again), not at every refresh."""
        if event not in self._warned:
            self._warned.add(event)
            log.warning(event, **fields)

    def flush(self) -> None:
        """Write this process's counts now (tests, and a process about to exit)."""
        with self._lock:
            if self._settings is not None:
                self._flush(self._settings.root)
                self._last_flush = time.monotonic()

    def announce_agent(self, agent: str, s: config.Settings) -> None:
        """Name the agent this process serves (the MCP server, in the federation of *s*) and announce it at once."""
        self.agent = agent
        self.mode(s)
        self._wake.set()

    def announce_adopted(self, module: str, adopted: bool, s: config.Settings) -> None:
        """Say that this process runs *module* adopted with :mod:`federation.adopt` (or no longer does)."""
        with self._lock:
            if adopted and module not in self.adopted:
                self.adopted.append(module)
            elif not adopted and module in self.adopted:
                self.adopted.remove(module)
        try:
            self.mode(s)  # resolve now: the process joins the fleet before its first call
        except Exception as exc:  # noqa: BLE001 - a bad setting is said by the first call, not by an import
            log.warning("rollout_announce_deferred", error=f"{type(exc).__name__}: {exc}")
            return
        self._wake.set()

    def retire(self) -> None:
        """No longer kept by this process (:func:`runtime_for` serves more federations than
        :data:`MAX_RUNTIMES`): its counts written, its announcement withdrawn, its thread ended."""
        with contextlib.suppress(Exception):
            self.tick(final=True)
        self._closed = True
        self._wake.set()

    def at_exit(self) -> None:
        if self._resolved:
            with contextlib.suppress(Exception):
                self.tick(final=True)

    def after_fork(self) -> None:
        """In a forked child: a process of its own (no thread yet, no counts of the parent's)."""
        self._lock = threading.RLock()
        self._flush_lock = threading.Lock()
        self._tick_lock = threading.Lock()
        self._closed = False
        self._thread = None
        self._wake = threading.Event()
        self.tally = _counts.Tally(self.tally.width)
        self._begin()
        self._settings = None  # resolve again (and start this process's thread) on the next call


def _due(last: float | None, now: float, interval: float) -> bool:
    """True when never done yet, or *interval* seconds (monotonic) have passed since *last*."""
    return last is None or now - last >= interval


@functools.lru_cache(maxsize=1)
def _program() -> str:
    """What this process runs, for the fleet's readers when it serves no single agent: ``federation
    dashboard``, ``worker.py``, ``python -c`` (the script's name, never its arguments: they may hold secrets)."""
    argv = sys.argv if isinstance(getattr(sys, "argv", None), list) else []
    first = os.path.basename(str(argv[0])) if argv and argv[0] else ""
    if first in ("", "-c"):
        return "python -c" if first == "-c" else "python"
    if first in ("federation", "__main__.py") and len(argv) > 1 and str(argv[1]).isidentifier():
        return f"federation {argv[1]}"
    return first[:80]


def _version() -> str:
    try:
        return importlib.metadata.version("federation")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
