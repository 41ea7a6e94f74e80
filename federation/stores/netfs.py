"""Is a path on a network filesystem?  SQLite's WAL must not be used there."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["NETWORK_FS", "network_fs_type"]

NETWORK_FS = {
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "ncpfs", "afs", "9p", "ceph", "glusterfs", "lustre",
    "gpfs", "beegfs", "davfs", "fuse.sshfs", "sshfs", "fuse.glusterfs", "fuse.ceph", "fuse.s3fs",
    "fuse.rclone", "fuse.gcsfuse", "fuse.davfs", "orangefs", "ocfs2", "gfs2",
}


def network_fs_type(path: Path, mounts_file: str = "/proc/self/mounts") -> str | None:
    """The type of the network filesystem *path* lives on, or None if local."""
    target = os.path.realpath(path)
    try:
        with open(mounts_file, encoding="utf-8", errors="replace") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return None
    best, best_type = "", None
    for line in lines:
        parts = line.split()
        if len(parts) < 3:
            continue
        mount_point = parts[1].replace("\\040", " ")
        if target == mount_point or target.startswith(mount_point.rstrip("/") + "/") or mount_point == "/":
            if len(mount_point) >= len(best):
                best, best_type = mount_point, parts[2]
    if best_type and (best_type in NETWORK_FS or best_type.split(".")[0] in {"nfs", "cifs"}):
        return best_type
    return None
