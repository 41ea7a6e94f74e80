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
from ..stores import files as _files
from ..errors import ConflictError, CorruptFileError, StorageError
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
    #: what could not be read and is not a regular file (a link, FIFO, folder): neither archived nor removed
    left: list[dict[str, str]] = dataclasses.field(default_factory=list)


def legacy_paths(root: Path, exclude: Path | None = None) -> tuple[list[Path], list[Path]]:
    """(directories, files) of the legacy tree under *root*, parents first: real folders and regular files
    only, reached through the gate (no link followed anywhere, top folders included)."""
    dirs, files, _ = _legacy_entries(root, exclude)
    return dirs, files


def _legacy_entries(root: Path, exclude: Path | None) -> tuple[list[Path], list[Path], dict[Path, os.stat_result]]:
    dirs: list[Path] = []
    files: list[Path] = []
    stats: dict[Path, os.stat_result] = {}
    for top in LEGACY_DIRS:
        base = root / top
        st = _files.lstat(base, root=root)
        # a link at a top folder (or a file there) is neither entered nor removed: `report` lists it
        if st is None or not stat.S_ISDIR(st.st_mode):
            continue
        dirs.append(base)
        stats[base] = st
        for entry in _files.walk_tree(base, root=root):
            mode = entry.stat.st_mode
            if stat.S_ISDIR(mode):
                dirs.append(entry.path)
                stats[entry.path] = entry.stat
            # a link, FIFO, socket or device is neither read (it could block, or lead outside the
            # root) nor removed: `migrate`/`report` list it; it stays for the operator
            elif stat.S_ISREG(mode) and (exclude is None or entry.path != exclude):
                files.append(entry.path)
    return dirs, files, stats


def _dir_info(path: Path, root: Path, st: os.stat_result) -> tarfile.TarInfo:
    """The archive's entry of a folder, from the stat its walk took (no path looked up again)."""
    info = tarfile.TarInfo(str(path.relative_to(root)))
    info.type = tarfile.DIRTYPE
    info.mode, info.mtime, info.uid, info.gid = stat.S_IMODE(st.st_mode), st.st_mtime, st.st_uid, st.st_gid
    return info


def _file_info(path: Path, root: Path, st: os.stat_result, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(str(path.relative_to(root)))
    info.mode, info.mtime, info.uid, info.gid, info.size = (stat.S_IMODE(st.st_mode), st.st_mtime, st.st_uid,
                                                            st.st_gid, size)
    return info


def _summary(report: Report) -> str:
    parts = []
    for name, t in report.entities.items():
        if not t.consistent:
            parts.append(f"{name}: {len(t.missing_in_db)} missing in db, {len(t.missing_in_files)} missing in "
                         f"files, {len(t.different)} different")
    return "; ".join(parts)


def archive_legacy(dest: Path, *, root: Path | None = None, settings: config.Settings,
                   phase: int | None = None) -> ArchiveResult:
    """Archive the legacy tree to *dest* (``.tar.gz``), verify it, remove the archived files.

    *settings*: the federation archived; *root*, when given, wins over its root.
    *phase*: the fleet's current phase (``federation archive-legacy`` passes the rollout's), so that
    a refusal names the repair that is safe in it.
    """
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
    dirs, found, dir_stats = _legacy_entries(root, dest)
    digests: dict[str, str] = {}
    stats: dict[Path, os.stat_result] = {}
    files: list[Path] = []
    # the destination is the operator's path (outside the root, or excluded from the walk): opened as given
    tmp = dest.with_name(f".{dest.name}.partial")
    total = 0
    try:
        with tarfile.open(tmp, "w:gz") as tar:
            for d in dirs:
                tar.addfile(_dir_info(d, root, dir_stats[d]))
            for path in found:
                got = _files.read_with_stat(path, root=root)  # bytes and stat of one descriptor, through the gate
                if got is None:
                    continue  # removed meanwhile
                data, st = got
                info = _file_info(path, root, st, len(data))
                tar.addfile(info, io.BytesIO(data))
                digests[info.name] = hashlib.sha256(data).hexdigest()
                stats[path] = st
                files.append(path)
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
        try:  # relative to its folder's descriptor, reached without links: never a file outside the root
            done = _files.remove_if_unchanged(path, root=root, seen=stats[path])
        except CorruptFileError:
            done = False  # swapped for a link or the like since it was archived: left alone
        if done is False:
            kept.append(str(path))  # written after it was archived: not ours to delete
        elif done:
            removed += 1
    for d in reversed(dirs):
        _files.remove_folder(d, root=root)  # not empty (something kept or added), or not a real folder: stays
    archived = {str(p) for p in files}
    unread = [u for u in report.unknown.entries() if u["path"] in archived]
    left = [u for u in report.unknown.entries() if u["path"] not in archived]
    return ArchiveResult(str(dest), len(files), total, removed, kept, unread, left)


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
