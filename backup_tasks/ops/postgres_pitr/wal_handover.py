"""The restore's read-ahead directory, and handing a segment from it to PostgreSQL without starting the package.

PostgreSQL runs restore_command once per segment and waits for it. A whole ``backupctl``
(config, catalog, keys, a tier round trip) per segment made replay several times slower
than copying from a local directory. So the first ``wal get`` of a segment starts a
read-ahead process (ops/postgres_pitr/wal_prefetch.py) that fetches the next segments, checks both of
their sha256 against the catalog's record, and renames each into a private directory
beside PostgreSQL's ``%p``: ``pg_wal/.backup-tasks-prefetch/<target>/``. Every later
``wal get`` first looks there, and if its segment is ready it only renames it into
``%p``; this module is all it needs, and it imports nothing but the standard library,
because each call is a fresh interpreter that PostgreSQL's replay waits on.

Why trust a file found there. The directory is created 0700 by the user PostgreSQL runs
as, inside PostgreSQL's own 0700 ``pg_wal``, and a file gets its final name only after
its digests matched; a directory owned by someone else, or readable by others, is
ignored. A rename within one directory tree on one file system is atomic, so PostgreSQL
never sees a partial segment under the name it asked for.

A segment the read-ahead is fetching right now is waited for (a second download of the
same segment would only compete with it for the CPU); one it does not plan to fetch, or
a read-ahead that has stopped or failed, sends the caller down the ordinary path, which
fetches it itself and reports any error with the exit status PostgreSQL expects.
"""

from __future__ import annotations

import fcntl
import os
import stat
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

DIR_NAME = ".backup-tasks-prefetch"
LOCK = ".lock"
#: the segments the running read-ahead has still to deliver, one name a line
PLAN = ".plan"
#: where the read-ahead's own errors go (it runs detached; PostgreSQL's log never sees them)
LOG = ".prefetch.log"
#: the timeline history files the archive held when the restore began, one name a line (their copies lie beside it)
HISTORIES = ".histories"
#: the longest a caller waits on one segment the read-ahead is fetching before fetching it itself
WAIT_SECONDS = 300.0
POLL_SECONDS = 0.02


def prefetch_dir(dest: Path, target: str) -> Path | None:
    """The read-ahead directory for PostgreSQL's ``%p``; None when ``dest`` is not in a ``pg_wal`` (a ``wal get`` by hand)."""
    parent = Path(dest).parent
    if parent.name != "pg_wal":
        return None
    return parent / DIR_NAME / target


def is_private(path: Path) -> bool:
    """A real directory of ours that no one else can read or write."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & 0o077


def make(path: Path) -> None:
    for d in (path.parent, path):
        try:
            os.mkdir(d, 0o700)
        except FileExistsError:
            pass
    if not (is_private(path.parent) and is_private(path)):
        raise PermissionError(f"{path} is not a private directory of this user")


def try_lock(path: Path) -> int | None:
    """The directory's read-ahead lock as an open descriptor, or None while someone else holds it.

    The lock belongs to the open file, so a descriptor handed to a child process keeps it
    held there: the ``wal get`` that starts a read-ahead takes the lock itself, and the
    next ``wal get`` already sees a read-ahead running while the child is still starting.
    """
    fd = os.open(path / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


@contextmanager
def locked(path: Path, fd: int | None = None) -> Iterator[bool]:
    """Hold the directory's read-ahead lock (``fd``: one already taken); yields whether it is ours."""
    fd = try_lock(path) if fd is None else fd
    try:
        yield fd is not None
    finally:
        if fd is not None:
            os.close(fd)


def running(path: Path) -> bool:
    """Whether a read-ahead holds the directory now."""
    try:
        fd = os.open(path / LOCK, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def write_plan(path: Path, names: list[str]) -> None:
    tmp = path / f"{PLAN}.tmp"
    tmp.write_text("".join(f"{n}\n" for n in names))
    os.replace(tmp, path / PLAN)


def planned(path: Path, name: str) -> bool:
    try:
        return name in (path / PLAN).read_text().split()
    except OSError:
        return False


def write_histories(path: Path, names: list[str]) -> None:
    tmp = path / f"{HISTORIES}.tmp"
    tmp.write_text("".join(f"{n}\n" for n in names))
    os.replace(tmp, path / HISTORIES)


def history(dest: Path, target: str, name: str) -> int | None:
    """A timeline history file from the restore's copies: 0 copied to ``dest``, 1 the archive had none, None: ask the archive.

    Recovery asks for history files that do not exist as a matter of course (the next
    timeline, at start and again when it promotes, and the parent's when it writes its
    own): each such probe answered by a whole ``backupctl`` cost most of a second. The
    restore lists what the archive held when it began and copies those files here
    (checked like segments); the answer is that of the archive as the restore planned
    against. A history file may be asked for more than once, so it is copied, not moved.
    """
    path = prefetch_dir(dest, target)
    if path is None or not is_private(path):
        return None
    try:
        listed = (path / HISTORIES).read_text().split()
    except OSError:
        return None
    if name not in listed:
        return 1
    tmp = Path(dest).with_name(f".{Path(dest).name}.backup-tasks.tmp")
    try:
        with open(path / name, "rb") as src, open(tmp, "wb") as out:
            out.write(src.read())
        os.replace(tmp, dest)
    except OSError:
        tmp.unlink(missing_ok=True)
        return None
    return 0


def take(dest: Path, target: str, name: str, *, wait: float = WAIT_SECONDS) -> bool:
    """Rename a read-ahead segment ``name`` into ``dest``; False when the caller must fetch it itself."""
    path = prefetch_dir(dest, target)
    if path is None or not is_private(path):
        return False
    ready = path / name
    deadline = time.monotonic() + wait
    while True:
        try:
            os.replace(ready, dest)
            return True
        except FileNotFoundError:
            pass
        if time.monotonic() > deadline or not (planned(path, name) and running(path)):
            break
        time.sleep(POLL_SECONDS)
    try:  # it may have landed between the last look and the read-ahead crossing it off its plan
        os.replace(ready, dest)
        return True
    except FileNotFoundError:
        return False
