"""Shared fixtures: a throwaway federation root and database per test."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from federation import config, core
from federation.sqlstore import forget_stores

REPO = Path(__file__).resolve().parent.parent


class Fed:
    """A federation under a temporary root; switch phases with :meth:`phase`."""

    def __init__(self, root: Path, db_path: Path):
        self.root = root
        self.db_path = db_path
        self.env = {"FEDERATION_ROOT": str(root), "FEDERATION_DB": str(db_path), "FEDERATION_USE_DB": "1",
                    "FEDERATION_PHASE": "3", "FEDERATION_SHADOW_SAMPLE": "1.0", "FEDERATION_DB_URL": None}
        self.apply()

    def apply(self) -> None:
        config._overrides.clear()
        config._overrides.update(self.env)
        config.reset()

    def phase(self, n: int) -> "Fed":
        """Phase 1 means FEDERATION_USE_DB=0."""
        if n == 1:
            self.env["FEDERATION_USE_DB"] = "0"
        else:
            self.env["FEDERATION_USE_DB"] = "1"
            self.env["FEDERATION_PHASE"] = str(n)
        self.apply()
        return self

    def store(self):
        from federation.sqlstore import get_store

        return get_store()

    def subprocess_env(self, phase: int | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FEDERATION_")}
        env.update({k: v for k, v in self.env.items() if v is not None})
        if phase is not None:
            if phase == 1:
                env["FEDERATION_USE_DB"] = "0"
            else:
                env["FEDERATION_USE_DB"] = "1"
                env["FEDERATION_PHASE"] = str(phase)
        env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
        return env

    def spawn(self, code: str, *args: str, phase: int | None = None) -> subprocess.Popen:
        """Start ``python -c code args...`` as a real process in this federation."""
        return subprocess.Popen([sys.executable, "-c", code, *args], env=self.subprocess_env(phase),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def run_py(self, code: str, phase: int | None = None, timeout: float = 120, check: bool = True,
               **kw) -> subprocess.CompletedProcess:
        proc = subprocess.run([sys.executable, "-c", code], env=self.subprocess_env(phase), capture_output=True,
                              text=True, timeout=timeout, **kw)
        if check and proc.returncode != 0:
            raise AssertionError(f"subprocess failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
        return proc


@pytest.fixture
def fed(tmp_path: Path):
    root = tmp_path / "fed"
    root.mkdir()
    forget_stores()
    core._history.clear()
    f = Fed(root, tmp_path / "federation.db")
    yield f
    forget_stores()
    config._overrides.clear()
    config.reset()
