"""The file-level pieces of the ``local`` tier (storage/local.py): names, modes, fsyncs, sweeps, remedies.

The tier's operations are built from these: the temp-name pattern ``put`` and
``link_in`` write under and the sweep of the ones killed writes left behind, the modes
every directory and file gets, the fsync of a directory after a rename, and what to do
about each OS error. Kept apart so storage/local.py holds the tier's operations
themselves; the external tier, a LocalStorage on a mount, shares them through it.
"""

from __future__ import annotations

import errno
import os
import re
import stat as stat_mod
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from backup_tasks.storage.base import validate_prefix
from backup_tasks.storage.capabilities import PartialWrite

#: link errors that mean "not possible here" (another filesystem, no hard links there, too
#: many links already), so the caller copies instead
CANNOT_LINK = (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP)

DIR_MODE = 0o700
FILE_MODE = 0o600

#: the temp file ``put`` writes beside ``<name>``: ``.<name>.<12 hex digits>.tmp`` (group 1: the name)
TEMP_NAME = re.compile(r"\.(.+)\.[0-9a-f]{12}\.tmp")

# A concurrent delete prunes empty directories; a put racing with it recreates them.
DIRECTORY_RACE_ATTEMPTS = 5


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    """``os.write`` until all of ``data`` is written (it may write less than asked)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable: the directory entry, not only the file, must reach the disk."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def unlink_quietly(path: Path) -> None:
    # Best effort while another error is on its way up; that error is the one to report,
    # and a leftover dot-named temp file is invisible to list() anyway.
    try:
        os.unlink(path)
    except OSError:
        pass


def utc(timestamp: float) -> datetime:
    """A file time as an aware UTC datetime, as ObjectInfo carries it."""
    return datetime.fromtimestamp(timestamp, tz=timezone.utc)


def remove_partial_writes(root: Path, prefix: str, older_than: datetime, prune: Callable[[Path], None], *,
                          dry_run: bool = False) -> list[PartialWrite]:
    """Unlink the temp files of puts that died under ``root`` (see ``LocalStorage.remove_partial_writes``).

    ``prune`` removes the directories a removal left empty, as a delete does.
    """
    validate_prefix(prefix)
    head = prefix.rpartition("/")[0]
    found = []
    for directory, _dirs, files in os.walk(root / head if head else root):
        rel_dir = os.path.relpath(directory, root)
        for name in files:
            match = TEMP_NAME.fullmatch(name)
            if not match:
                continue
            key = match.group(1) if rel_dir == "." else f"{rel_dir}/{match.group(1)}"
            path = Path(directory) / name
            try:
                st = path.lstat()
            except FileNotFoundError:
                continue  # renamed into place or removed meanwhile
            modified = utc(st.st_mtime)
            if not key.startswith(prefix) or not stat_mod.S_ISREG(st.st_mode) or modified >= older_than:
                continue
            if not dry_run:
                unlink_quietly(path)
                prune(path.parent)
            found.append(PartialWrite(key=key, path=str(path), size=st.st_size, modified=modified))
    return found


def remedy(err: int | None, root: Path, tier: str) -> str:
    """How to fix an OS error ``err`` on the local tier ``tier`` rooted at ``root``."""
    if err == errno.ENOSPC:
        return f"free space on the filesystem holding {root} or point tier '{tier}' at a larger one; nothing was left under the key"
    if err == errno.EDQUOT:
        return f"raise the disk quota of uid {os.geteuid()} on {root} or remove old backups"
    if err == errno.EIO:
        return f"the disk under {root} reported an I/O error: check the kernel log (dmesg) and the disk's health before trusting it"
    if err == errno.EROFS:
        return f"{root} is on a read-only filesystem: remount it read-write or choose another path for tier '{tier}'"
    if err in (errno.EACCES, errno.EPERM):
        return f"make {root} writable by the worker's user (uid {os.geteuid()}) or choose another path for tier '{tier}'"
    if err in (errno.ENOTDIR, errno.EEXIST):
        return f"a component of the path is a regular file, not a directory: fix the path of tier '{tier}' or move the file"
    if err == errno.EISDIR:
        return "the key is a prefix of other keys (a directory); store the object under another key"
    if err == errno.EFBIG:
        return "the file size limit was reached: raise `ulimit -f` for the worker or use a filesystem that allows larger files"
    return f"check that {root} exists, is a directory and is writable by uid {os.geteuid()}"
