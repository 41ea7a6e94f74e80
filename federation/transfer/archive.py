"""Phase 4 clean-up: archive the legacy tree, verify the archive, then remove the files.

Refuses unless the consistency report says the files and the database
agree.  The archive holds ``nodes/`` and ``shared/`` exactly (contents,
modes, times); it is written beside the target, read back and compared file
by file (SHA-256) before it takes its name, and only then are the archived
files removed.  A file that changed after it was archived is kept.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import stat
import tarfile
from pathlib import Path

from .. import config
from ..domain.authority import repair_command
from ..domain.layout import TOP_DIRS
from ..stores.files import read_regular
from ..errors import ConflictError, StorageError
from .report import Report, build_report

__all__ = ["ArchiveResult", "archive_legacy", "legacy_paths"]

LEGACY_DIRS = TOP_DIRS


@dataclasses.dataclass
class ArchiveResult:
    archive: str
    files: int
    bytes: int
    removed: int
    kept: list[str]
    #: legacy documents that could not be read: archived byte for byte, never compared (``{"path", "reason"}``)
    unread: list[dict[str, str]] = dataclasses.field(default_factory=list)


def legacy_paths(root: Path, exclude: Path | None = None) -> tuple[list[Path], list[Path]]:
    """(directories, files) of the legacy tree under *root*, parents first."""
    dirs: list[Path] = []
    files: list[Path] = []
    for top in LEGACY_DIRS:
        base = root / top
        if not base.is_dir():
            continue
        for here, subdirs, names in os.walk(base):
            subdirs.sort()
            dirs.append(Path(here))
            for name in sorted(names):
                path = Path(here) / name
                # a link, FIFO, socket or device is neither read (it could block, or lead outside the
                # root) nor removed: `migrate`/`report` list it; it stays for the operator
                if (exclude is None or path != exclude) and stat.S_ISREG(os.lstat(path).st_mode):
                    files.append(path)
    return dirs, files


def _summary(report: Report) -> str:
    parts = []
    for name, t in report.entities.items():
        if not t.consistent:
            parts.append(f"{name}: {len(t.missing_in_db)} missing in db, {len(t.missing_in_files)} missing in "
                         f"files, {len(t.different)} different")
    return "; ".join(parts)


def archive_legacy(dest: Path, *, root: Path | None = None, settings: config.Settings | None = None,
                   phase: int | None = None) -> ArchiveResult:
    """Archive the legacy tree to *dest* (``.tar.gz``), verify it, remove the archived files.

    *settings*: the federation archived (default: the configured one); *root*, when given, wins over its root.
    *phase*: the fleet's current phase (``federation archive-legacy`` passes the rollout's), so that
    a refusal names the repair that is safe in it.
    """
    settings = settings or config.settings()
    root = Path(root) if root is not None else settings.root
    dest = Path(dest).absolute()
    if dest.exists():
        raise ConflictError(f"{dest} already exists: choose a new archive name")
    report = build_report(root, settings=settings)
    # A document that cannot be read is not compared (unknown, never empty); its bytes go into the verified
    # archive like every file, so removing it loses nothing.  Any difference refuses.
    if report.differences:
        raise ConflictError(f"the files and the database differ, so nothing was archived or removed "
                            f"({_summary(report)}). Run `federation report`, repair with {_repair(phase)}, "
                            "and try again")
    dirs, files = legacy_paths(root, exclude=dest)
    digests: dict[str, str] = {}
    stats: dict[Path, os.stat_result] = {}
    tmp = dest.with_name(f".{dest.name}.partial")
    total = 0
    try:
        with tarfile.open(tmp, "w:gz") as tar:
            for d in dirs:
                tar.add(d, arcname=str(d.relative_to(root)), recursive=False)
            for path in files:
                data = read_regular(path) or b""
                info = tar.gettarinfo(str(path), arcname=str(path.relative_to(root)))
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
                digests[info.name] = hashlib.sha256(data).hexdigest()
                stats[path] = os.stat(path)
                total += len(data)
        _verify(tmp, digests)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    removed, kept = 0, []
    for path in files:
        before = stats[path]
        try:
            now = os.stat(path)
        except FileNotFoundError:
            continue
        if (now.st_size, now.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
            kept.append(str(path))  # written after it was archived: not ours to delete
            continue
        path.unlink()
        removed += 1
    for d in reversed(dirs):
        try:
            d.rmdir()
        except OSError:
            pass  # not empty: something was kept or added
    return ArchiveResult(str(dest), len(files), total, removed, kept, report.unknown.entries())


def _verify(archive: Path, digests: dict[str, str]) -> None:
    """Read the archive back: every file present with the same SHA-256, nothing else."""
    seen: dict[str, str] = {}
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                if member.isfile():
                    fh = tar.extractfile(member)
                    seen[member.name] = hashlib.sha256(fh.read()).hexdigest()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise StorageError(f"the archive {archive} could not be read back: {exc}") from None
    if seen != digests:
        bad = sorted(set(seen.items()) ^ set(digests.items()))[:3]
        raise StorageError(f"the archive {archive} does not match the files it was made from ({bad}); "
                           "nothing was removed")


def _repair(phase: int | None) -> str:
    """The sync that is safe in the fleet's phase (archiving is phase 4's step: the files are rewritten)."""
    if phase is None:  # not told: the report names it
        return "the `federation sync` it names"
    return f"`{repair_command(phase)}`"
