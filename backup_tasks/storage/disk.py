"""The filesystem under a directory tier, measured one way for every question asked of it.

A local tier asks before a put whether the object fits, an external tier whether
``min_free_bytes`` would stay free, and the watchdog how full the disk is; all three
read the same numbers from here. Before the first backup a tier's directory may not
exist yet: the filesystem that counts is then the one its nearest existing parent is on,
where the first put will create it.
"""

from __future__ import annotations

import os
from pathlib import Path

from backup_tasks.storage.capabilities import DiskUsage


def nearest_existing(path: Path) -> Path:
    """``path`` if it exists, else its nearest parent that does (``/`` at the latest)."""
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def usage(path: Path) -> DiskUsage | None:
    """Total bytes, and bytes a non-root writer may still use, of the filesystem holding ``path``.

    None when the filesystem cannot be measured (a stale NFS handle, no permission):
    callers then let the write itself report the real problem.
    """
    try:
        st = os.statvfs(nearest_existing(path))
    except OSError:
        return None
    return DiskUsage(total=st.f_blocks * st.f_frsize, free=st.f_bavail * st.f_frsize)


def writable(directory: Path) -> bool:
    """Whether this process may create files in ``directory`` (write and search permission)."""
    return os.access(directory, os.W_OK | os.X_OK)
