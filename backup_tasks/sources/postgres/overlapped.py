"""A parallel pg_restore (``jobs > 1``) that loads the data while the plaintext still streams.

``pg_restore -j`` must seek in its archive, so the plaintext has to land in a file; but
waiting for the whole file before loading anything puts decrypt and decompress in
series with the load. Instead the stream is teed: into a private file, and into a
single-job ``pg_restore --section=pre-data --section=data`` reading stdin (a custom
archive reads sequentially from a pipe), so the tables fill while the stream arrives.
Once the stream has ended and ``before_load`` (the digest check) passed, ``pg_restore
--section=post-data -j N`` builds indexes, constraints and triggers from the file, where
parallel jobs help most. With a single dominant table the data section is one COPY
anyway, so nothing is lost by loading it with one job.

The file holds only the archive's header and TOC, where they belong, and a hole for the
data (custom_toc.py): post-data reads nothing else, so a restore needs no staging space
the size of the database. An archive whose TOC cannot be located is written whole.

Everything lands in the caller's staging database, which it only renames after this
returned; a failure of either side stops the other (see ``load``).
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import BinaryIO, Callable

from backup_tasks.errors import DeadlineExceeded
from backup_tasks.sources.db import pipes
from backup_tasks.sources.postgres import custom_toc
from backup_tasks.sources.tee import TeeReader

ARCHIVE_NAME = "restore.pgdump"


def load(plaintext: BinaryIO, argv: list[str], *, jobs: int, env: dict, workdir: Path, what: str,
         deadline: float | None = None, before_load: Callable[[], None] | None = None) -> tuple[pipes.Outcome, dict, int]:
    """Restore ``plaintext`` with ``argv`` (pg_restore and its options), data streaming, post-data with ``jobs``.

    Returns pg_restore's outcome, the seconds each phase took (the stream with the data
    load, the digest check, post-data), which say where a slow restore spends its time,
    and how many bytes the archive's file took on disk.

    A failing streaming pg_restore stops the tee at its next write (the pipe breaks) and
    its outcome comes back at once, without reading the rest of the stream; a failing
    stream (decrypt, decompress, disk) kills that pg_restore. The file is 0600 and is
    removed whatever happens.
    """
    archive = Path(workdir) / ARCHIVE_NAME
    started = time.monotonic()
    seconds: dict = {}
    fd = os.open(archive, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            # post-data reads only the archive's header and TOC: the data blocks, which the
            # pipe already loaded, stay a hole in the file (no staging space, no copy)
            kept = custom_toc.TocOnly(fh)
            tee = TeeReader(plaintext, kept.write)
            first = pipes.feed_into([*argv, "--section=pre-data", "--section=data"], tee, env=env, what=what,
                                    deadline=deadline)
            if first.returncode != 0:
                return first, seconds, kept.written
            # pg_restore stops reading after the last data block it needs; the digest check needs the whole stream
            tee.drain()
            kept.close()
        streamed = time.monotonic()
        seconds["stream_and_data"] = round(streamed - started, 3)
        if before_load:
            before_load()
        checked = time.monotonic()
        seconds["digest_check"] = round(checked - streamed, 3)
        try:
            done = subprocess.run([*argv, "--section=post-data", "-j", str(jobs), str(archive)], env=env,
                                  stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                  timeout=None if deadline is None else max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise DeadlineExceeded(f"{what} ran past its deadline and was stopped", "raise the time limit") from None
        seconds["post_data"] = round(time.monotonic() - checked, 3)
        return pipes.Outcome(done.returncode, first.stderr + done.stderr), seconds, kept.written
    finally:
        archive.unlink(missing_ok=True)
