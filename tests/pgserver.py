"""A throwaway PostgreSQL server for the tests and the benchmarks.

``PgServer.start()`` runs initdb in a temporary directory and starts a server
on a free port of 127.0.0.1 (trust authentication, unix socket in the same
temporary directory).  The server refuses to run as root, so as root it runs
as the ``postgres`` user.  Durability is switched off: the data is thrown away.

From the shell (``.ci/run`` does this)::

    eval "$(python tests/pgserver.py start)"   # exports FEDERATION_TEST_PG_URL and FEDERATION_TEST_PG_DIR
    python tests/pgserver.py stop "$FEDERATION_TEST_PG_DIR"
"""

from __future__ import annotations

import glob
import os
import shlex
import shutil
import sys
import socket
import subprocess
import tempfile
from pathlib import Path

__all__ = ["PgServer", "find_bindir", "HOW_TO_ENABLE"]

HOW_TO_ENABLE = (
    "set FEDERATION_TEST_PG_URL=postgresql://user@host:port/dbname (a role that may CREATE DATABASE), "
    "or install the PostgreSQL server binaries (initdb, pg_ctl; e.g. apt-get install postgresql) so the "
    "tests can start a throwaway server; FEDERATION_TEST_PG_BIN names their directory if it is not on PATH"
)

_SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "max_connections": "200",
    "fsync": "off",  # a throwaway server: speed over durability
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "shared_buffers": "64MB",
    "log_min_messages": "warning",
}


def find_bindir() -> Path | None:
    """The directory of the PostgreSQL server binaries, or None."""
    explicit = os.environ.get("FEDERATION_TEST_PG_BIN", "").strip()
    if explicit:  # only there (also a way to pretend there are none)
        ok = all(os.access(os.path.join(explicit, b), os.X_OK) for b in ("initdb", "pg_ctl"))
        return Path(explicit) if ok else None
    candidates = []
    which = shutil.which("pg_ctl")
    if which:
        candidates.append(os.path.dirname(which))

    def version(path: str) -> int:
        try:
            return int(Path(path).parent.name.split(".")[0])
        except ValueError:
            return 0

    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True)
    for c in candidates:
        if c and os.access(os.path.join(c, "initdb"), os.X_OK) and os.access(os.path.join(c, "pg_ctl"), os.X_OK):
            return Path(c)
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgServer:
    """One throwaway server: ``start()``, ``url``, ``stop()``, ``start()`` again, ``destroy()``."""

    def __init__(self, bindir: Path | None = None, existing: Path | None = None):
        self._as_postgres = os.geteuid() == 0
        if existing is not None:  # a server made earlier (by another process)
            self.dir = Path(existing)
            self.bindir = Path((self.dir / "bindir").read_text().strip())
            self.port = int((self.dir / "port").read_text())
        else:
            self.bindir = bindir or find_bindir()
            if self.bindir is None:
                raise RuntimeError("no PostgreSQL server binaries found: " + HOW_TO_ENABLE)
            self.dir = Path(tempfile.mkdtemp(prefix="federation-pg-"))
            self.port = free_port()
        self.data = self.dir / "data"
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        if existing is None:
            if self._as_postgres:
                shutil.chown(self.dir, "postgres", "postgres")
            (self.dir / "bindir").write_text(str(self.bindir))
            (self.dir / "port").write_text(str(self.port))
            self._initdb()

    def _cmd(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        argv = [str(self.bindir / args[0]), *args[1:]]
        if self._as_postgres:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd="/")
        if check and proc.returncode != 0:
            log = self.dir / "server.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}\n{tail}")
        return proc

    def _initdb(self) -> None:
        self._cmd("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "--no-locale",
                  "-E", "UTF8", "--no-sync")
        extra = dict(_SETTINGS, port=str(self.port), unix_socket_directories=f"'{self.dir}'")
        with open(self.data / "postgresql.conf", "a", encoding="utf-8") as fh:
            fh.write("\n# federation tests\n" + "".join(f"{k} = {v}\n" for k, v in extra.items()))

    def start(self) -> "PgServer":
        self._cmd("pg_ctl", "-D", str(self.data), "-l", str(self.dir / "server.log"), "-w", "-t", "60", "start")
        return self

    def stop(self, mode: str = "fast") -> None:
        self._cmd("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop", check=False)

    def running(self) -> bool:
        return self._cmd("pg_ctl", "-D", str(self.data), "status", check=False).returncode == 0

    def destroy(self) -> None:
        if self.data.exists():
            self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)


def main(argv: list[str]) -> int:
    if argv[:1] == ["start"]:
        server = PgServer().start()
        print(f"export FEDERATION_TEST_PG_URL={shlex.quote(server.url)} "
              f"FEDERATION_TEST_PG_DIR={shlex.quote(str(server.dir))}")
        return 0
    if argv[:1] == ["stop"] and len(argv) == 2:
        PgServer(existing=Path(argv[1])).destroy()
        return 0
    print("usage: pgserver.py start | stop DIR", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
