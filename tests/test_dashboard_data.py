"""The dashboard's data, metrics and app are handed the settings of the federation they show.

Two federations (each its own root and database, made by real processes through
the shim) are read and served side by side in one process, while the process's
own configuration points at a third, empty one: each page, each ``/metrics``
and each server shows its own flag, counts and rows.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from federation import config

from test_dashboard import AGENT, families, get, sample


def make_federation(fed, root: Path, database: dict, reads: int, edited: int, reason: str) -> config.Settings:
    """A federation under *root*: its flag set with *reason*, *reads* compared reads of which *edited*
    differ (a real process through the shim); returns its settings, built without the process's."""
    root.mkdir()
    env = {**fed.subprocess_env(phase=3), "FEDERATION_ROOT": str(root)}
    env.update({k: v for k, v in database.items() if v is not None})
    if database.get("FEDERATION_DB_URL") is None:
        env.pop("FEDERATION_DB_URL", None)
    proc = subprocess.run([sys.executable, "-m", "federation", "rollout", "set", "1", "--reason", reason],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    proc = subprocess.run([sys.executable, "-c", AGENT, str(reads), str(edited), "a", "exit"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "ready" in proc.stdout, proc.stderr
    return config.Settings(root=root, db_path=Path(env["FEDERATION_DB"]), db_url=env.get("FEDERATION_DB_URL"),
                           use_db=True, phase=3, shadow_sample=1.0, phase_pinned=True)


class Served:
    """``create_app(settings=...)`` served by uvicorn in a thread of this process, on a free port."""

    def __init__(self, settings: config.Settings):
        import uvicorn

        from federation.apps.dashboard import create_app

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(create_app(settings=settings), host="127.0.0.1",
                                                    port=self.port, log_level="warning", access_log=False))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "the server did not start in 60 s"
            time.sleep(0.05)

    def get(self, path: str):
        return get(f"http://127.0.0.1:{self.port}{path}")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def test_two_federations_read_and_served_in_one_process_each_see_their_own(fed, tmp_path):
    """DashboardData, MetricsCollector and create_app take the settings they are handed, not the
    process's: two federations in one process, the process configured for a third, each shows its own
    flag, comparisons, mismatches, row counts, database, guards and dead letters (nothing is read from
    the third)."""
    from federation.apps.dashboard import DashboardData, MetricsCollector

    one = make_federation(fed, tmp_path / "one", fed.database_env(tmp_path / "one.db"), 3, 1, "root one")
    two = make_federation(fed, tmp_path / "two", fed.database_env(tmp_path / "two.db"), 7, 2, "root two")
    # the process's own configuration: a third federation with nothing in it
    config.set_overrides({"FEDERATION_ROOT": str(tmp_path / "elsewhere"),
                          **fed.database_env(tmp_path / "elsewhere.db")})
    assert config.settings().root == tmp_path / "elsewhere"

    expected = {"root one": (one, 3, 1), "root two": (two, 7, 2)}
    servers = []
    try:
        for reason, (settings, reads, edited) in expected.items():
            data = DashboardData(settings)
            page = data.page("24h")
            assert page["status"]["flag"]["phase"] == 1 and page["status"]["flag"]["reason"] == reason
            assert [h["reason"] for h in page["status"]["history"]] == [reason]
            context = page["status"]["consistency"]["context"]
            assert (context["comparisons"], context["mismatches"]) == (reads, edited), (reason, context)
            assert sum(p["comparisons"] for p in page["series"]["context"]) == reads
            assert page["tables"]["context"] == reads, page["problems"]
            assert page["database"] == {"display": settings.db_display, "engine": fed.engine, "ok": True,
                                        "error": None}
            assert len(page["mismatches"]) == edited
            # the guards of the next step are judged on this federation (backfilled: its own migrate ran)
            assert page["guards"]["error"] is None and page["guards"]["to"] == 2, page["guards"]
            checks = {c["name"]: c for c in page["guards"]["checks"]}
            assert checks and all(c["fix"] is not None or c["ok"] for c in checks.values()), checks
            # dead letters: these settings are pinned to phase 3, so read from this federation's database
            assert page["dead_letters"] == {"count": 0, "oldest_dead_at": None, "oldest_age_s": None}

            body, _ = MetricsCollector(data).exposition()
            fams = families(body.decode())
            labels = {"entity": "context", "phase": "3"}
            assert sample(fams, "federation_shadow_comparisons", "federation_shadow_comparisons_total",
                          **labels) == reads
            assert sample(fams, "federation_shadow_mismatches", "federation_shadow_mismatches_total",
                          **labels) == edited
            assert sample(fams, "federation_flag_phase", "federation_flag_phase") == 1
            assert sample(fams, "federation_table_rows", "federation_table_rows", table="context") == reads

            servers.append((reason, reads, Served(settings)))
        # both served at once from this process: each answers with its own federation
        for reason, reads, server in servers:
            status = server.get("/api/status").json()
            assert status["flag"]["reason"] == reason
            assert status["consistency"]["context"]["comparisons"] == reads
            fams = families(server.get("/metrics").text)
            assert sample(fams, "federation_table_rows", "federation_table_rows", table="context") == reads
    finally:
        for _, _, server in servers:
            server.stop()
    # and nothing was read from (or written to) the process's configured root
    assert not (tmp_path / "elsewhere" / "control").exists()
