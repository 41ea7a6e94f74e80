"""Configuration, read from the environment in one place.

Every value is validated when read; a bad value raises :class:`ConfigError`
naming the variable and the accepted values.  Tests and benchmarks override
values with :func:`set_overrides` (for the rest of the process) or
:func:`override` (for a ``with`` block); :func:`settings_with` builds settings
from given values without overriding anything (the CLI hands them to the
commands, which take ``settings=``); :func:`phase_env` is the one mapping of a
rollout phase to its variables.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import os
import threading
from pathlib import Path
from typing import Iterator, Mapping

from .errors import ConfigError

__all__ = ["Settings", "settings", "settings_with", "override", "set_overrides", "clear_overrides", "phase_env",
           "reset", "default_root", "serving", "MAX_CONTENT_BYTES"]

#: Largest message / context text accepted, in bytes of UTF-8 (documented in the README).
MAX_CONTENT_BYTES = 64 * 1024


def default_root() -> Path:
    """A per-user data folder that works on a fresh machine without root."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "federation"


@dataclasses.dataclass(frozen=True)
class Settings:
    root: Path
    db_path: Path
    db_url: str | None
    use_db: bool
    phase: int
    shadow_sample: float
    #: FEDERATION_USE_DB / FEDERATION_PHASE set: this process is pinned, the live flag does not move it
    phase_pinned: bool = False
    #: FEDERATION_SHADOW_SAMPLE set: the live flag's sample does not apply
    sample_pinned: bool = False

    @property
    def engine(self) -> str:
        return "postgresql" if self.db_url else "sqlite"

    @property
    def effective_phase(self) -> int:
        """1 when the database is off, else the configured phase (2, 3 or 4)."""
        return self.phase if self.use_db else 1

    @property
    def db_display(self) -> str:
        if self.db_url:
            return redact_url(self.db_url)
        return str(self.db_path)


def redact_url(url: str) -> str:
    """*url* without its password: never print a password that is part of a URL."""
    import re

    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


def _parse(env: Mapping[str, str]) -> Settings:
    raw_root = env.get("FEDERATION_ROOT", "").strip()
    root = Path(raw_root).expanduser() if raw_root else default_root()
    raw_db = env.get("FEDERATION_DB", "").strip()
    db_path = Path(raw_db).expanduser() if raw_db else root / "federation.db"

    db_url = env.get("FEDERATION_DB_URL", "").strip() or None
    if db_url is not None and not db_url.startswith(("postgresql://", "postgres://")):
        raise ConfigError(
            f"FEDERATION_DB_URL={db_url!r} is not accepted: use a postgresql://… URL, "
            "or leave it unset for SQLite"
        )

    raw_use = env.get("FEDERATION_USE_DB", "1").strip()
    if raw_use not in ("0", "1"):
        raise ConfigError(f"FEDERATION_USE_DB={raw_use!r} is not accepted: use 1 (database on) or 0 (files only)")
    use_db = raw_use == "1"

    raw_phase = env.get("FEDERATION_PHASE", "3").strip()
    if raw_phase not in ("2", "3", "4"):
        raise ConfigError(f"FEDERATION_PHASE={raw_phase!r} is not accepted: use 2, 3 or 4")
    phase = int(raw_phase)

    raw_sample = env.get("FEDERATION_SHADOW_SAMPLE", "1.0").strip()
    try:
        sample = float(raw_sample)
    except ValueError:
        sample = float("nan")
    if not (0.0 <= sample <= 1.0):  # also rejects NaN
        raise ConfigError(
            f"FEDERATION_SHADOW_SAMPLE={raw_sample!r} is not accepted: use a number from 0.0 to 1.0"
        )
    return Settings(root=root, db_path=db_path, db_url=db_url, use_db=use_db, phase=phase, shadow_sample=sample,
                    phase_pinned="FEDERATION_USE_DB" in env or "FEDERATION_PHASE" in env,
                    sample_pinned="FEDERATION_SHADOW_SAMPLE" in env)


_lock = threading.Lock()
_cached: Settings | None = None
_overrides: dict[str, str | None] = {}

_VARS = (
    "FEDERATION_ROOT",
    "FEDERATION_DB",
    "FEDERATION_DB_URL",
    "FEDERATION_USE_DB",
    "FEDERATION_PHASE",
    "FEDERATION_SHADOW_SAMPLE",
    "XDG_DATA_HOME",
)


#: The settings of the federation served in this thread or task (``Federation.serve``), if any.
_serving: contextvars.ContextVar[Settings | None] = contextvars.ContextVar("federation_serving", default=None)


def settings() -> Settings:
    """The current settings, validated: those of the federation served in this thread or task
    (:func:`serving`), else the environment plus overrides.

    Read once and cached: a call costs one global look-up.  The environment is
    read again after :func:`reset` or inside :func:`override`.
    """
    served = _serving.get()
    if served is not None:
        return served
    global _cached
    cached = _cached
    if cached is not None:
        return cached
    env = os.environ
    raw = tuple(_overrides[k] if k in _overrides else env.get(k) for k in _VARS)
    merged = {k: v for k, v in zip(_VARS, raw) if v is not None}
    value = _parse(merged)
    with _lock:
        _cached = value
    return value


def settings_with(values: Mapping[str, object]) -> Settings:
    """The settings of the environment and the current overrides with *values* on top, validated.

    Nothing is cached or overridden: the CLI builds one invocation's settings with its ``--root`` /
    ``--db`` and hands them to the command (alembic's ``command.upgrade(config, ...)``), so a second
    federation in the same process is not moved by it.  A value of ``None`` hides the variable.
    """
    checked = _checked(values)
    env = os.environ
    merged: dict[str, str] = {}
    for key in _VARS:
        value = checked[key] if key in checked else _overrides[key] if key in _overrides else env.get(key)
        if value is not None:
            merged[key] = value
    return _parse(merged)


def _checked(values: Mapping[str, object]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for key, value in values.items():
        if key not in _VARS:
            raise ConfigError(f"unknown setting {key}: use one of {', '.join(_VARS)}")
        out[key] = None if value is None else str(value)
    return out


def set_overrides(values: Mapping[str, object], *, replace: bool = False) -> None:
    """Override variables for the rest of the process (``--root``/``--db``, test fixtures).

    A value of ``None`` hides the variable.  With *replace*, earlier overrides
    are dropped first.  Values are validated when the settings are next read.
    """
    checked = _checked(values)
    with _lock:
        if replace:
            _overrides.clear()
        _overrides.update(checked)
    reset()


def clear_overrides() -> None:
    """Drop every override: the environment alone counts again."""
    with _lock:
        _overrides.clear()
    reset()


def phase_env(phase: int) -> dict[str, str]:
    """The variables that pin a process to rollout *phase* (1 = files only)."""
    if phase not in (1, 2, 3, 4):
        raise ConfigError(f"phase {phase!r} is not accepted: use 1, 2, 3 or 4")
    if phase == 1:
        return {"FEDERATION_USE_DB": "0"}
    return {"FEDERATION_USE_DB": "1", "FEDERATION_PHASE": str(phase)}


@contextlib.contextmanager
def override(**values: object) -> Iterator[Settings]:
    """Temporarily override variables: ``override(FEDERATION_PHASE="4")``.

    A value of ``None`` removes the variable for the duration.
    """
    checked = _checked(values)
    saved = dict(_overrides)
    try:
        _overrides.update(checked)
        reset()
        yield settings()
    finally:
        _overrides.clear()
        _overrides.update(saved)
        reset()


@contextlib.contextmanager
def serving(s: Settings) -> Iterator[Settings]:
    """Within the block, in this thread or task only, :func:`settings` is *s*: what the federation built
    from *s* (``federation.Federation.serve``) answers with.  Nothing is overridden for other threads."""
    token = _serving.set(s)
    try:
        yield s
    finally:
        _serving.reset(token)


def reset() -> None:
    """Forget cached settings (tests)."""
    global _cached
    _cached = None


# ---------------------------------------------------------------------------
# the control plane's timings (federation.rollout); tests shorten them


@dataclasses.dataclass(frozen=True)
class ControlTimings:
    #: seconds between two announcements of a process in ``control/fleet/``
    fleet_refresh: float = 2.0
    #: a process not seen for this many seconds is shown as gone (a dead process on another host is
    #: known within 10 s; one of this host at once, by its pid)
    fleet_timeout: float = 9.0
    #: seconds between two flushes of a process's counts (and at exit)
    counts_flush: float = 10.0
    #: the live flag is re-read at most this often, in seconds
    flag_check: float = 1.0
    #: counts are kept per bucket of this many seconds (a divisor of 3600)
    counts_bucket: float = 60.0


_TIMING_VARS = {
    "FEDERATION_FLEET_REFRESH": "fleet_refresh",
    "FEDERATION_FLEET_TIMEOUT": "fleet_timeout",
    "FEDERATION_COUNTS_FLUSH": "counts_flush",
    "FEDERATION_FLAG_CHECK": "flag_check",
    "FEDERATION_COUNTS_BUCKET": "counts_bucket",
}


def control_timings(env: Mapping[str, str] | None = None) -> ControlTimings:
    """The control plane's intervals from the environment (each a positive number of seconds).

    Unlike :func:`settings`, a bad value here is not fatal to a running
    process: it raises :class:`ConfigError`, which the control plane logs
    before falling back to the defaults.
    """
    env = os.environ if env is None else env
    values: dict[str, float] = {}
    for var, field in _TIMING_VARS.items():
        raw = env.get(var, "").strip()
        if not raw:
            continue
        try:
            value = float(raw)
        except ValueError:
            value = float("nan")
        if not (0.0 < value < 86400.0):
            raise ConfigError(f"{var}={raw!r} is not accepted: use a number of seconds above 0")
        if field == "counts_bucket" and (value != int(value) or 3600 % int(value)):
            raise ConfigError(f"{var}={raw!r} is not accepted: use a whole number of seconds that divides 3600")
        values[field] = value
    return ControlTimings(**values)


#: How many times a leased message is delivered before it becomes a dead letter (docs/delivery.md).
DEFAULT_MAX_ATTEMPTS = 5
#: The highest ``FEDERATION_MAX_ATTEMPTS``: no delivery count read from the disk may be higher.
MAX_ATTEMPTS_LIMIT = 1000


def max_attempts(env: Mapping[str, str] | None = None) -> int:
    """``FEDERATION_MAX_ATTEMPTS`` (a whole number from 1 to 1000), default 5; read at each call (no
    settings object to reset).  A bad value is a :class:`ConfigError` naming the variable."""
    return _whole_number(env, "FEDERATION_MAX_ATTEMPTS", DEFAULT_MAX_ATTEMPTS, MAX_ATTEMPTS_LIMIT)


def _whole_number(env: Mapping[str, str] | None, name: str, default: int, limit: int) -> int:
    """The variable *name* of *env* (default: the environment) as a whole number from 1 to *limit*; *default*
    when unset or empty; else a :class:`ConfigError` naming it."""
    env = os.environ if env is None else env
    raw = env.get(name, "").strip()
    if not raw:
        return default
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 6 or not 1 <= int(raw) <= limit:
        raise ConfigError(f"{name}={raw!r} is not accepted: use a whole number from 1 to {limit}")
    return int(raw)


#: How many idle database connections a process keeps per database (``FEDERATION_DB_CONNECTIONS``).
DEFAULT_DB_CONNECTIONS = 8
DB_CONNECTIONS_LIMIT = 256


def db_connections(env: Mapping[str, str] | None = None) -> int:
    """``FEDERATION_DB_CONNECTIONS`` (a whole number from 1 to 256), default 8: the connections a process keeps
    open per database between transactions, shared by its threads (a thread borrows one for a transaction; one
    more is opened when all are busy, and closed after if the pool is full).  Read when a database is first used
    in the process.  A bad value is a :class:`ConfigError` naming the variable."""
    return _whole_number(env, "FEDERATION_DB_CONNECTIONS", DEFAULT_DB_CONNECTIONS, DB_CONNECTIONS_LIMIT)
