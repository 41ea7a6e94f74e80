"""One gate to the shared disk (issue 25, CONTRACT "One gate to the shared disk").

No link, race or planted file under the root makes the federation read, write, create or delete
anything outside it: every case below plants one and checks that a marker tree OUTSIDE the root is
unchanged (names, kinds, contents, modification times).  The last tests keep every module but the
gate (``federation/stores/files.py``, its face, and its private modules ``federation/stores/_fs_*.py``) off
the file system under the root.
"""

from __future__ import annotations

import ast
import json
from collections import Counter
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from federation import config, context, messaging
from federation.errors import FederationError
from federation.stores import files
from federation.stores.files import Tree, has_legacy_data

from test_rollout import REPO, cli, run_cli, unpinned_env  # noqa: E402
from test_untrusted_files import bounded, message, write  # noqa: E402

DAY = 86400.0


def marker_tree(base: Path, names: tuple[str, ...] = ()) -> Path:
    """A folder OUTSIDE the root holding what housekeeping or a claim would touch: old files, a folder named
    like an hour of counts, message-like files (*names*), a nested folder."""
    out = base / "OUTSIDE"
    out.mkdir()
    old = time.time() - 40 * DAY
    for name in ("polls.json", "old.json", "old.jsonl", "keep.txt", *names):
        write(out / name, {"sender": "alice", "content": "outside", "message_type": "task",
                           "timestamp": "2024-01-01T00:00:00"})
    (out / "20200101T00").mkdir()
    write(out / "20200101T00" / "x.json", {"outside": True})
    write(out / "deep" / "deeper" / "file.json", {"outside": True})
    for p in [*out.rglob("*"), out]:
        os.utime(p, (old, old), follow_symlinks=False)
    return out


def snapshot(folder: Path) -> dict[str, tuple]:
    """Every entry under *folder* (and the folder): kind, bytes of a file, modification time."""
    out = {}
    for p in [folder, *sorted(folder.rglob("*"))]:
        st = p.lstat()
        out[str(p.relative_to(folder.parent))] = (st.st_mode, st.st_mtime_ns,
                                                  p.read_bytes() if p.is_file() and not p.is_symlink() else None)
    return out


def link(at: Path, to: Path) -> Path:
    at.parent.mkdir(parents=True, exist_ok=True)
    if at.is_dir() and not at.is_symlink():
        import shutil

        shutil.rmtree(at)
    at.symlink_to(to)
    return at


# ---------------------------------------------------------------------------
# 1. archive-legacy through a linked top folder


def test_archive_legacy_never_enters_a_linked_top_folder(fed, tmp_path):
    """``nodes -> OUTSIDE``: archive-legacy archives and removes what is really under the root (shared/),
    lists nothing outside, deletes nothing outside."""
    from federation import governance
    from federation.transfer.archive import archive_legacy
    from federation.transfer.migrate import migrate

    fed.phase(1)
    governance.create_poll("alice", "q?", ["a", "b"])
    assert migrate(settings=config.settings()).exit_code in (0, 3)
    outside = marker_tree(tmp_path)
    (fed.root / "nodes").mkdir(exist_ok=True)
    import shutil

    shutil.rmtree(fed.root / "nodes")
    link(fed.root / "nodes", outside)
    before = snapshot(outside)
    fed.phase(4)
    try:
        result = archive_legacy(tmp_path / "a.tgz", root=fed.root, settings=config.settings())
    except FederationError:
        result = None  # refusing is fine too; deleting outside is not
    assert snapshot(outside) == before
    assert (fed.root / "nodes").is_symlink()
    if result is not None:
        assert all(str(outside) not in p for p in result.kept)
        assert result.files == 1 and not (fed.root / "shared" / "polls.json").exists()


# ---------------------------------------------------------------------------
# 2. housekeeping through linked control folders; 5. control/ itself a link

@pytest.mark.sqlite_only
@pytest.mark.parametrize("linked", ["control/fleet", "control/mismatches", "control/counts", "control/counts/hour",
                                    "control"])
def test_housekeeping_never_deletes_or_writes_through_a_linked_control_folder(fed, tmp_path, linked):
    """A process's start (announce + retention of fleet files, counts hours and mismatches) and its writes
    (fleet file, counts, mismatches) never reach OUTSIDE through a linked control folder; the call itself
    works (phase 1)."""
    outside = marker_tree(tmp_path)
    control = fed.root / "control"
    (control / "counts").mkdir(parents=True)
    if linked == "control/counts/hour":
        old_hour = time.strftime("%Y%m%dT%H", time.gmtime(time.time() - 40 * DAY))
        this_hour = time.strftime("%Y%m%dT%H", time.gmtime())
        link(control / "counts" / old_hour, outside)
        link(control / "counts" / this_hour, outside)
    else:
        link(fed.root / linked, outside)
    before = snapshot(outside)
    code = ("from federation import context, rollout\n"
            "context.set_context('alice', 'hi')\n"
            "rollout.RUNTIME.tally.observe('context', 2, compared=True, mismatched=True)\n"
            "rollout.RUNTIME.tally.mismatch(entity='context', key='alice', phase=2, op='set', authority='files',"
            " diff=[])\n"
            "rollout.RUNTIME.flush()\n")
    proc = subprocess.run([sys.executable, "-c", code], env=unpinned_env(fed),
                          capture_output=True, text=True, timeout=60, cwd=str(REPO))
    assert proc.returncode == 0, proc.stderr[-3000:]
    if linked == "control":
        for args in (("rollout", "set", "2", "--reason", "go"), ("agents", "add", "carol")):
            bounded(lambda: run_cli(fed, *args))
    assert snapshot(outside) == before


# ---------------------------------------------------------------------------
# 3. receive through a linked leased/ or dead/, and the swap race


@pytest.mark.parametrize("phase", [1, 2, 3])
@pytest.mark.parametrize("folder", ["leased", "dead"])
def test_receive_never_moves_a_message_through_a_linked_folder(fed, tmp_path, phase, folder):
    """``nodes/bob/leased -> OUTSIDE`` (or dead/) holding ``<id>.json``: receive refuses (typed) or skips,
    the outside file is neither overwritten nor removed, the message stays under the root (phases 1-3)."""
    fed.phase(phase)
    mid = messaging.send_message("alice", "bob", "hello")
    outside = marker_tree(tmp_path, names=(f"{mid}.json",))
    link(fed.root / "nodes" / "bob" / folder, outside)
    before = snapshot(outside)
    try:
        got = messaging.receive("bob")
    except FederationError:
        got = None
    if got:
        messaging.ack("bob", [m["id"] for m in got])
    messaging.dead_letters("bob")
    assert snapshot(outside) == before
    if phase < 3 and folder == "leased":
        assert (fed.root / "nodes" / "bob" / "inbox" / f"{mid}.json").is_file()  # never left the root


SWAPPER = r"""
import ctypes, os, sys, time
inbox, outside, seconds, pause = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
spare = inbox + ".link"
os.symlink(outside, spare)
libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD, RENAME_EXCHANGE = -100, 2
def exchange():  # inbox/ and the link trade places atomically: inbox/ is never missing
    if libc.renameat2(AT_FDCWD, inbox.encode(), AT_FDCWD, spare.encode(), RENAME_EXCHANGE) != 0:
        raise OSError(ctypes.get_errno(), "renameat2")
swaps, end = 0, time.monotonic() + seconds
while time.monotonic() < end:
    exchange()  # inbox -> OUTSIDE
    exchange()  # back
    swaps += 1
    time.sleep(pause)  # inbox/ is real most of the time: bob's calls get through, and race the swap
os.unlink(spare)
print(swaps)
"""


@pytest.mark.sqlite_only
def test_a_racing_swap_of_inbox_for_a_link_never_pulls_outside_files_in(fed, tmp_path):
    """While another process swaps ``inbox/`` for a link to OUTSIDE thousands of times, bob's receive+ack
    loop (one message at a time: a claim per call) never claims, acks or deletes the 100 same-named files
    in OUTSIDE (phase 1: the files; before the gate a claim was a rename by path, redirected by the swap).
    A legacy writer keeps bob's inbox fed with messages of those 100 names (through the gate: never
    written through the link)."""
    fed.phase(1)
    names = [f"race{i}" for i in range(100)]
    outside = marker_tree(tmp_path, names=tuple(f"{n}.json" for n in names))
    before = snapshot(outside)
    inbox = fed.root / "nodes" / "bob" / "inbox"
    messaging.send_message("alice", "bob", "first")  # makes the folders
    swapper = subprocess.Popen([sys.executable, "-c", SWAPPER, str(inbox), str(outside), "6", "0.0003"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    got, n = [], 0
    end = time.monotonic() + 6
    while time.monotonic() < end:
        name = names[n % len(names)]
        n += 1
        try:
            files.atomic_write_json(inbox / f"{name}.json", message(id=name, recipient="bob"), root=fed.root)
        except FederationError:
            pass  # inbox/ is the link right now: the writer writes nothing through it
        try:
            batch = messaging.receive("bob", limit=1)
            got += [m["id"] for m in batch]
            messaging.ack("bob", [m["id"] for m in batch])
        except FederationError:
            pass  # a typed refusal while the folder is a link: fine
    out, err = swapper.communicate(timeout=30)
    assert swapper.returncode == 0, err
    swaps = int(out.strip() or 0)
    assert swaps >= 2000, f"only {swaps} swaps: the race was not exercised"
    assert len(got) > 500, f"bob received {len(got)} messages in {n} rounds: the race was not exercised"
    assert inbox.is_dir() and not inbox.is_symlink()
    assert snapshot(outside) == before


# ---------------------------------------------------------------------------
# 4. lock files; 5. the control lock and appends


@pytest.mark.sqlite_only
def test_a_fifo_lock_file_never_blocks_and_a_dangling_link_creates_nothing(fed, tmp_path):
    fed.phase(1)
    messaging.send_message("alice", "bob", "hi")
    locks = fed.root / ".locks"
    locks.mkdir(exist_ok=True)
    for f in locks.iterdir():
        f.unlink()
    os.mkfifo(locks / "inbox-bob.lock")
    target = tmp_path / "OUTSIDE-created.lock"
    (locks / "node-alice.lock").symlink_to(target)
    with pytest.raises(FederationError, match="FIFO"):
        bounded(lambda: messaging.check_inbox("bob"), 20)
    with pytest.raises(FederationError, match="link"):
        bounded(lambda: context.set_context("alice", "x"), 20)
    assert not target.exists() and not target.is_symlink()


@pytest.mark.sqlite_only
def test_control_lock_history_and_syncs_are_never_written_through(fed, tmp_path):
    """A dangling ``control/.lock`` link, ``history.jsonl`` as a link and ``syncs.jsonl`` as a hard link to
    an outside file: ``rollout set`` and a recorded sync refuse (typed), nothing outside changes or appears."""
    from federation.rollout import _flag, _io

    outside = marker_tree(tmp_path)
    control = fed.root / "control"
    control.mkdir()
    (control / ".lock").symlink_to(outside / "made-by-lock")
    before = snapshot(outside)
    proc = run_cli(fed, "rollout", "set", "2", "--reason", "go")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert snapshot(outside) == before
    (control / ".lock").unlink()
    (control / "history.jsonl").symlink_to(outside / "old.jsonl")
    proc = run_cli(fed, "rollout", "set", "2", "--reason", "go")
    assert "Traceback" not in proc.stderr
    with pytest.raises(FederationError):
        _flag.append_history(fed.root, {"phase": 2})
    os.link(outside / "keep.txt", control / "syncs.jsonl")
    with pytest.raises(FederationError, match="hard link"):
        _flag.record_sync(fed.root, "db", 1)
    fifo = control / "fifo.jsonl"
    os.mkfifo(fifo)
    with pytest.raises(FederationError):
        bounded(lambda: _io.append_line(fifo, {"a": 1}), 20)
    assert snapshot(outside) == before


# ---------------------------------------------------------------------------
# 6. temporary files of atomic writes


@pytest.mark.sqlite_only
def test_a_hard_link_planted_at_the_temp_name_is_never_truncated(fed, tmp_path):
    """``.NAME.PID.TID.tmp`` is created with O_EXCL: a hard link planted there (the pid is public in
    control/fleet/) keeps its outside file's bytes; the write itself succeeds."""
    fed.phase(1)
    context.set_context("alice", "first")
    outside = marker_tree(tmp_path)
    before = snapshot(outside)
    node = fed.root / "nodes" / "alice"
    tmp = node / f".context_window.json.{os.getpid()}.{threading.get_ident()}.tmp"
    os.link(outside / "keep.txt", tmp)
    context.set_context("alice", "second")
    assert context.get_context("alice")["context"] == "second" if "context" in (context.get_context("alice") or {}) \
        else True
    assert json.loads((node / "context_window.json").read_text())
    files.write_bytes(fed.root / "control" / "flag-test.json", b"{}", root=fed.root)
    os.link(outside / "polls.json", fed.root / "control" / f".x.json.{os.getpid()}.{threading.get_ident()}.tmp")
    files.write_bytes(fed.root / "control" / "x.json", b"{}", root=fed.root)
    assert (fed.root / "control" / "x.json").read_bytes() == b"{}"
    assert snapshot(outside) == before


# ---------------------------------------------------------------------------
# 7. existence through links


def test_legacy_data_is_never_seen_through_a_link(fed, tmp_path):
    """Only ``shared/polls.json -> OUTSIDE/polls.json``: no legacy data (a fresh database serves phase 3);
    a tree with only leased/ or dead/ messages has legacy data."""
    from federation import governance

    outside = marker_tree(tmp_path)
    link(fed.root / "shared" / "polls.json", outside / "polls.json")
    tree = Tree(fed.root)
    assert not has_legacy_data(tree)
    fed.phase(3)
    assert governance.list_polls() == []  # a fresh database serves phase 3: no BackfillRequiredError
    (fed.root / "shared" / "polls.json").unlink()
    link(fed.root / "nodes", outside)
    assert not has_legacy_data(tree)
    (fed.root / "nodes").unlink()
    for folder in ("leased", "dead"):
        path = write(fed.root / "nodes" / "bob" / folder / "m1.json", message())
        assert has_legacy_data(tree), folder
        path.unlink()
    assert not has_legacy_data(tree)


# ---------------------------------------------------------------------------
# 8. links, FIFOs and the like are listed as invalid


def test_links_and_fifos_are_listed_invalid_by_migrate_report_and_doctor(fed, tmp_path):
    from federation.transfer.migrate import migrate
    from federation.transfer.report import build_report

    fed.phase(1)
    context.set_context("alice", "hi")
    outside = marker_tree(tmp_path)
    planted = {
        link(fed.root / "nodes" / "bob" / "leased", outside),
        link(fed.root / "nodes" / "carol" / "inbox" / "m1.json", outside / "polls.json"),
        link(fed.root / "shared" / "sessions", outside),
    }
    fifo = fed.root / "nodes" / "alice" / "inbox" / "m2.json"
    fifo.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(fifo)
    planted.add(fifo)
    before = snapshot(outside)
    result = bounded(lambda: migrate(dry_run=True, settings=config.settings()))
    listed = {i["path"] for i in result.invalid}
    assert {str(p) for p in planted} <= listed, listed
    report = bounded(lambda: build_report(fed.root, settings=config.settings()))
    assert {str(p) for p in planted} <= {i["path"] for i in report.invalid}
    control = fed.root / "control"
    control.mkdir(exist_ok=True)
    link(control / "fleet", outside)
    os.mkfifo(control / "flag.json")
    proc = bounded(lambda: run_cli(fed, "doctor", "--json"))
    assert str(control / "fleet") in proc.stdout and str(control / "flag.json") in proc.stdout, proc.stdout[-3000:]
    assert snapshot(outside) == before


# ---------------------------------------------------------------------------
# the static test: only the gate touches the file system under the root

PACKAGE = REPO / "federation"

#: the gate itself: its face (what every caller imports) and its private modules, written by concern (the walk
#: and the looks, the reads, the writes and removals, the locks, the fleet's stamps), which only the gate imports
GATE_FACE = "federation/stores/files.py"
GATE = {GATE_FACE, "federation/stores/_fs_walk.py", "federation/stores/_fs_read.py", "federation/stores/_fs_write.py",
        "federation/stores/_fs_locks.py", "federation/stores/_fs_stamps.py"}

#: modules that touch the file system on paths that are NOT under the federation root: why, and exactly the
#: calls they make (kind: count) -- a call added to one of them fails the test until someone checks that it
#: is not on a path under the root and counts it here
ALLOWED = {
    # the SQLite database file, its -wal/-shm and the write-gate lock beside it (the operator's FEDERATION_DB)
    "federation/stores/sqlite.py": ("the SQLite database path",
        {'.exists()': 1, '.mkdir()': 1, 'os.open': 1}),
    "federation/stores/database.py": ("the SQLite database path (exists)",
        {'.exists()': 1}),
    "federation/stores/netfs.py": ("/proc/mounts (the filesystem type of the database)",
        {'open()': 1}),
    "federation/operations/doctor.py": ("the SQLite database, its WAL and free space of their filesystem",
        {'.exists()': 4}),
    # the operator's backup destination and the database file it copies
    "federation/operations/backup.py": ("the backup destination and the SQLite database file",
        {'.exists()': 2, '.is_dir()': 1, '.is_file()': 1, '.is_symlink()': 1, 'os.link': 1, 'os.open': 3, 'os.rename': 1, 'os.unlink': 1}),
    # the archive destination file (its temp beside it, fsync, rename) given by --to
    "federation/transfer/archive.py": ("the archive destination file given by --to",
        {'.exists()': 1, '.unlink()': 1, 'open()': 1, 'os.replace': 1}),
    # the log file of `rollout status --log` (FEDERATION_LOG_FILE), and /proc/PID/stat
    "federation/rollout/_log_summary.py": ("the log file",
        {'open()': 1}),
    "federation/_logging.py": ("the log file (FEDERATION_LOG_FILE)",
        {'open()': 1}),
    "federation/rollout/_fleet.py": ("/proc/PID/stat (a process's start time)",
        {'open()': 1}),
    # the dashboard's static files, shipped inside the package
    "federation/apps/dashboard/app.py": ("the package's static files",
        {'.read_bytes()': 1}),
    # the root itself, given by the operator: whether it is a folder (never a path below it); the folder of the
    # SQLite file given by --db: whether it exists (a mistyped path is refused; nothing is opened or made, and
    # the database is opened there anyway); /dev/null put in place of a stdout whose reader went away
    "federation/cli/_base.py": ("the root itself (is it a folder?), --db's folder (does it exist?), /dev/null",
        {'.exists()': 2, '.is_dir()': 1, 'os.open': 1}),
    "federation/cli/_serve.py": ("the root itself (is it a folder? made by `agents add`)",
        {'.exists()': 1, '.is_dir()': 1, '.mkdir()': 1}),
    # the root itself, made on a process's first call (a database-only federation still has its control/)
    "federation/stores/sqlstore.py": ("the root itself (made if missing)",
        {'os.makedirs': 1}),
    # `federation restore`: the backup given by --from and the SQLite database file it replaces
    "federation/operations/restore.py": ("the backup file and the SQLite database path",
        {'.is_file()': 1, '.is_symlink()': 1, '.mkdir()': 1, 'shutil.copyfile': 1, 'os.open': 1, 'os.replace': 1,
         '.unlink()': 2}),
    # /dev/null put in place of the stdout of a stdio server whose client went away
    "federation/apps/mcp_server.py": ("/dev/null", {'os.open': 1}),
    # the demo/bench tree generator writes a test tree of its own making (never a live federation)
    "federation/domain/generate.py": ("a generated test tree (tools and tests)",
        {'.exists()': 1, '.mkdir()': 3, '.write_bytes()': 1, 'open()': 1}),
}

OS_CALLS = {"open", "rename", "replace", "unlink", "remove", "mkdir", "makedirs", "scandir", "listdir", "stat",
            "lstat", "rmdir", "removedirs", "walk", "link", "symlink", "mkfifo", "chmod", "utime", "truncate"}
PATH_CALLS = {"exists", "isdir", "isfile", "islink", "lexists", "getsize", "getmtime"}
SHUTIL_CALLS = {"rmtree", "copy", "copy2", "copyfile", "copytree", "move"}
METHOD_CALLS = {"read_text", "write_text", "read_bytes", "write_bytes", "unlink", "mkdir", "iterdir", "glob",
                "rglob", "exists", "is_dir", "is_file", "is_symlink", "rmdir", "touch", "symlink_to", "lstat",
                "hardlink_to", "chmod"}
BUILTINS = {"open"}


def _package_names(tree: ast.AST) -> set[str]:
    """Names bound to modules or objects of the package itself (``from ..stores import files as _files``):
    their methods are the gate's operations, not file-system calls."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("federation")):
            out.update(a.asname or a.name for a in node.names)
    return out


def _calls(tree: ast.AST) -> list[tuple[int, str]]:
    out = []
    ours = _package_names(tree)
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        fn = node.func
        if isinstance(fn, ast.Name) and fn.id in BUILTINS:
            out.append((node.lineno, f"{fn.id}()"))
        elif isinstance(fn, ast.Attribute):
            base = fn.value
            if isinstance(base, ast.Name) and base.id == "os" and fn.attr in OS_CALLS:
                out.append((node.lineno, f"os.{fn.attr}"))
            elif isinstance(base, ast.Attribute) and base.attr == "path" and isinstance(base.value, ast.Name) \
                    and base.value.id == "os" and fn.attr in PATH_CALLS:
                out.append((node.lineno, f"os.path.{fn.attr}"))
            elif isinstance(base, ast.Name) and base.id == "shutil" and fn.attr in SHUTIL_CALLS:
                out.append((node.lineno, f"shutil.{fn.attr}"))
            elif isinstance(base, ast.Name) and base.id in ours:
                continue  # the gate's operations (or another module of the package)
            elif fn.attr in METHOD_CALLS and not (isinstance(base, ast.Name) and base.id in ("os", "shutil")):
                out.append((node.lineno, f".{fn.attr}()"))
            elif fn.attr == "open" and not (isinstance(base, ast.Name) and base.id in ("tarfile", "gzip", "io")):
                out.append((node.lineno, ".open()"))
    return out


def test_only_the_gate_touches_the_file_system_under_the_root():
    """Every module of the package is parsed: a file-system call (os.open/rename/replace/unlink/mkdir/
    scandir/listdir/stat..., os.path.exists..., shutil.rmtree..., Path.open/read_text/write_text/unlink/
    mkdir/iterdir/glob/exists..., open()) outside the gate and the modules allowed above fails."""
    found, changed = {}, {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = str(path.relative_to(REPO))
        if rel in GATE:
            continue
        calls = _calls(ast.parse(path.read_text(encoding="utf-8"), rel))
        if rel in ALLOWED:
            counted = dict(Counter(kind for _, kind in calls))
            if counted != ALLOWED[rel][1]:
                changed[rel] = {"now": counted, "allowed": ALLOWED[rel][1], "calls": calls}
        elif calls:
            found[rel] = calls
    assert not found, "file-system calls outside the gate (federation/stores/files.py): " + json.dumps(found)
    assert not changed, "the file-system calls of an allowed module changed: check each is not on a path under " \
                        "the root, then count it in ALLOWED: " + json.dumps(changed)


def test_the_gate_is_its_modules_and_only_the_gate_imports_its_private_ones():
    """GATE names exactly the face and the ``_fs_*`` modules there are (a new private module of the gate is
    listed here, or the static test would fail it); only modules of the gate import a private one, so every
    other module reaches the disk through the face."""
    from test_imports import import_graph

    assert GATE == {GATE_FACE} | {str(p.relative_to(REPO)) for p in (PACKAGE / "stores").glob("_fs_*.py")}
    private = {rel[:-3].replace("/", ".") for rel in GATE - {GATE_FACE}}
    gate = {rel[:-3].replace("/", ".") for rel in GATE}
    importers = {m: sorted(edges & private) for m, edges in import_graph().items() if edges & private}
    assert importers and set(importers) <= gate, importers
    for rel in GATE - {GATE_FACE}:  # each private module does some of the gate's work on the disk
        assert _calls(ast.parse((REPO / rel).read_text(encoding="utf-8"))), rel


def test_the_static_test_sees_a_call():
    """The checker finds each kind of call it looks for (a checker that finds nothing proves nothing)."""
    code = ("import os, shutil\nfrom pathlib import Path\nos.rename('a', 'b')\nos.path.exists('a')\n"
            "shutil.rmtree('a')\nPath('a').read_text()\nPath('a').exists()\nopen('a')\nos.scandir('a')\n")
    assert len(_calls(ast.parse(code))) == 7
    for rel in ALLOWED:
        assert (REPO / rel).is_file(), f"{rel} is allowed but does not exist: remove it from ALLOWED"


# ---------------------------------------------------------------------------
# planted at random: every folder the federation uses, every kind of plant, every phase

PLACES = ("nodes", "shared", "control", "control/fleet", "control/counts", "control/mismatches", "control/flag.json",
          "control/history.jsonl", "control/syncs.jsonl", "control/.lock", "control/agents.json", ".locks",
          ".locks/inbox-bob.lock", ".locks/node-alice.lock", ".locks/polls.lock", "nodes/alice", "nodes/bob/inbox",
          "nodes/bob/leased", "nodes/bob/dead", "nodes/alice/sent_keys", "nodes/bob/inbox/PLANT.json",
          "nodes/bob/leased/.leases.json", "nodes/alice/context_window.json", "shared/polls.json", "shared/sessions",
          "nodes/alice/inbox")
KINDS = ("link-to-folder", "link-to-file", "dangling-link", "hard-link", "fifo", "oversized")


def _plant(root: Path, outside: Path, place: str, kind: str) -> None:
    at = root / place
    for parent in at.relative_to(root).parents:  # never plant through a plant (the test would write outside)
        if parent != Path(".") and ((root / parent).is_symlink() or (root / parent).exists()
                                    and not (root / parent).is_dir()):
            return
    if at.is_symlink() or at.exists():
        if at.is_dir() and not at.is_symlink():
            import shutil

            shutil.rmtree(at)
        else:
            at.unlink()
    at.parent.mkdir(parents=True, exist_ok=True)
    if kind == "link-to-folder":
        at.symlink_to(outside)
    elif kind == "link-to-file":
        at.symlink_to(outside / "polls.json")
    elif kind == "dangling-link":
        at.symlink_to(outside / f"made-{at.name}")
    elif kind == "hard-link":
        os.link(outside / "keep.txt", at)
    elif kind == "fifo":
        os.mkfifo(at)
    else:
        with open(at, "wb") as fh:
            fh.truncate(files.MAX_FILE_BYTES + 1)  # sparse: costs no disk


def _every_call(fed, root: Path) -> None:
    from federation import governance
    from federation.operations.doctor import doctor
    from federation.transfer.migrate import migrate
    from federation.transfer.report import build_report

    calls = [lambda: context.set_context("alice", "x"), lambda: context.get_context("alice"),
             lambda: messaging.send_message("alice", "bob", "hi"), lambda: messaging.check_inbox("bob"),
             lambda: messaging.ack("bob", [m["id"] for m in messaging.receive("bob")]),
             lambda: messaging.dead_letters("bob"), lambda: governance.create_poll("alice", "q?", ["a", "b"]),
             lambda: governance.list_polls(), lambda: migrate(root, dry_run=True, settings=config.settings()), lambda: build_report(root, settings=config.settings()),
             lambda: doctor(settings=config.settings())]
    done = 0
    for phase in (1, 2, 3, 4):
        fed.phase(phase)
        for call in calls:
            try:
                bounded(call, 20)
                done += 1
            except FederationError:
                pass  # typed: fine
    return done


@pytest.mark.sqlite_only
def test_plants_anywhere_never_reach_outside_or_hang(fed, tmp_path):
    """Links (to folders, files, dangling), hard links, FIFOs and oversized files planted at random places of
    a live tree; every agent call and command in phases 1-4: nothing outside changes, nothing hangs, every
    problem is typed (hypothesis, few examples: each runs ~40 calls)."""
    from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

    counter = iter(range(1000))
    ran: list[int] = []

    @hsettings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(st.lists(st.tuples(st.sampled_from(PLACES), st.sampled_from(KINDS)), min_size=1, max_size=4,
                    unique_by=lambda p: p[0]))
    def run(plants):
        base = tmp_path / f"ex{next(counter)}"
        root = base / "fed"
        root.mkdir(parents=True)
        fed.env.update({"FEDERATION_ROOT": str(root), "FEDERATION_DB": str(base / "federation.db")})
        fed.phase(1)
        context.set_context("alice", "seed")
        messaging.send_message("alice", "bob", "seed")
        outside = marker_tree(base)
        for place, kind in sorted(plants, key=lambda p: -p[0].count("/")):  # deepest first
            _plant(root, outside, place, kind)
        before = snapshot(outside)
        ran.append(_every_call(fed, root))
        assert snapshot(outside) == before, plants

    run()
    assert len(ran) >= 3 and max(ran) >= 20, ran  # the examples ran, and most calls in them worked


@pytest.mark.sqlite_only
def test_hard_linked_lock_files_are_locked_but_never_written(fed, tmp_path):
    """A lock file that is a hard link (its other name may be outside the root) still locks, but the fleet's
    stamp is never written into it: every lock file of the tree planted as a hard link to an outside file,
    every call in phases 1-4, and the outside file is byte for byte what it was (the random plants above found
    ``.locks/inbox-bob.lock`` overwritten by a stamp once)."""
    root = fed.root
    context.set_context("alice", "seed")
    messaging.send_message("alice", "bob", "seed")
    outside = marker_tree(tmp_path)
    for place in (p for p in PLACES if p.endswith(".lock")):
        _plant(root, outside, place, "hard-link")
    before = snapshot(outside)
    assert _every_call(fed, root) >= 30  # the calls worked: a hard-linked lock still locks
    assert snapshot(outside) == before
