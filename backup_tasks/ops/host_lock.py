"""One shipping run at a time on a host: a non-blocking flock on a file beside what it ships.

The WAL spool and the binlog copies are per host, and beat publishes their shipping
task every minute; a run that takes longer than that must not be joined by the next
one, which would upload the same files twice. A kernel lock goes away with the process
that held it, so a killed run never leaves a stale lock behind.
"""

from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def exclusive(path: Path) -> Iterator[bool]:
    """Hold the lock on ``path`` (created 0600) if nobody else does; yields whether this caller got it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)
