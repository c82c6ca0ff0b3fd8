"""A restore's WAL read-ahead: fetch the segments PostgreSQL will ask for next while it replays this one.

pgBackRest (``archive-get`` with ``archive-async``) and WAL-G (``prefetch``) do the same,
for the same reason: replay asks for one segment at a time and waits for each, so
fetching, decrypting and checking the next ones in the background turns most
restore_command calls into a local rename (ops/postgres_pitr/wal_handover.py).

The read-ahead is a detached ``backupctl wal prefetch`` started by the first ``wal get``
that had to fetch a segment itself, or a thread of a restore that starts the server and
waits for it (``prepare``). It holds the directory's lock (one per restore), keeps at most ``WINDOW``
segments ready, fetches ``WORKERS`` at a time, each through the same checked fetch as
``wal get`` (ops/postgres_pitr/wal.py: both sha256 against the catalog's record before the file gets
its name), and stops when:
- the archive holds nothing more on the timeline (or the next segment is missing: ``wal
  get`` then answers "no such file" for it, as recovery expects) and all it fetched has
  been taken;
- a fetched segment waited ``IDLE_SECONDS`` without being taken (recovery reached its
  target, stopped, or moved to another timeline): it then removes what it fetched, so no
  stale copy stays in ``pg_wal``;
- the directory is removed (the restore cleaned up after promotion), or a fetch fails
  (that segment's ``wal get`` then fetches it itself and reports the error).
Correctness never depends on it: any segment it has not delivered is fetched by
``wal get`` as if there were no read-ahead.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path

from backup_tasks import defaults
from backup_tasks.ops.postgres_pitr import wal, wal_handover
from backup_tasks.ops.runtime import Runtime
from backup_tasks.sources.postgres import walnames

log = logging.getLogger(__name__)

DIR_NAME = wal_handover.DIR_NAME
WINDOW = defaults.WAL_PREFETCH_SEGMENTS
WORKERS = defaults.WAL_PREFETCH_WORKERS
IDLE_SECONDS = 30.0
#: segments the restore fetches itself before the server starts
EARLY = 2
TICK_SECONDS = 0.05


def prepare(rt: Runtime, target: str, datadir: Path, first: str, *, read_ahead: bool = False) -> ReadAhead | None:
    """Before a restored server starts: what replay asks for first, checked and ready beside its pg_wal.

    The archive's timeline history files (wal_handover.history) and the base's first
    ``EARLY`` segments, fetched by the restore itself, so that replay's first requests find
    them. With ``read_ahead`` (a restore that starts the server and waits for it) the
    restore also reads ahead itself, in a thread, from the segment after those: a
    read-ahead process would take most of a second to start, and replay would wait on it.
    The caller closes what is returned once recovery is over. Without it, the first ``wal
    get`` that has to fetch starts a read-ahead process.
    """
    into = wal_handover.prefetch_dir(Path(datadir) / "pg_wal" / "RECOVERYXLOG", target)
    wal_handover.make(into)
    timeline, seq = walnames.parse_segment(first)
    early = _next_contiguous(rt, target, timeline, max(seq - 1, 0), EARLY)
    last = early[-1].name if early else walnames.segment_name(timeline, max(seq - 1, 0))
    ahead = None
    if read_ahead:
        try:
            ahead = _start_here(rt, target, last, datadir)
        except Exception:  # noqa: BLE001 - without it, the first wal get starts one itself; the restore is only slower
            log.warning("no early WAL read-ahead for %s", target, exc_info=True)
    histories = [row for row in rt.catalog.logs(target, wal.FAMILY) if row.kind == "history"]
    for row in histories:
        wal.fetch(rt, row, into / row.name)
    wal_handover.write_histories(into, [row.name for row in histories])
    for row in early:
        wal.fetch(rt, row, into / row.name)
    return ahead


class ReadAhead:
    """A read-ahead running in a thread of this process; ``close`` stops it and waits for it."""

    def __init__(self, rt: Runtime, target: str, after: str, into: Path, lock_fd: int) -> None:
        self.stop = threading.Event()
        self.result: dict | None = None
        self._thread = threading.Thread(target=self._run, args=(rt, target, after, into, lock_fd), daemon=True,
                                        name="wal-read-ahead")
        self._thread.start()

    def _run(self, rt: Runtime, target: str, after: str, into: Path, lock_fd: int) -> None:
        try:
            with wal_handover.locked(into, lock_fd):
                self.result = _loop(rt, target, after, into, self.stop)
        except Exception:  # noqa: BLE001 - logged by _loop; each segment it did not deliver, wal get fetches itself
            pass

    def close(self) -> None:
        self.stop.set()
        self._thread.join(timeout=30)


def _start_here(rt: Runtime, target: str, after: str, datadir: Path) -> ReadAhead | None:
    """A read-ahead in this process's thread, for a restored server's WAL after segment ``after``.

    Only for a data directory this process's user will run: the copies must belong to the
    server's user, and a restore run by root hands the directory over before the server
    starts (the first ``wal get`` then starts a read-ahead process as that user).
    """
    if os.geteuid() == 0:
        return None
    claimed = _claim(rt, target, after, Path(datadir) / "pg_wal" / "RECOVERYXLOG")
    if claimed is None:
        return None
    into, fd = claimed
    try:
        return ReadAhead(rt, target, after, into, fd)
    except BaseException:
        os.close(fd)
        raise


def _claim(rt: Runtime, target: str, name: str, dest: Path) -> tuple[Path, int] | None:
    """The read-ahead directory and its lock, with the first segments after ``name`` planned; None: nothing to do."""
    into = wal_handover.prefetch_dir(dest, target)
    if into is None or WINDOW < 1 or walnames.kind_of(name) != "segment":
        return None
    try:
        wal_handover.make(into)
    except OSError as exc:
        log.warning("no WAL read-ahead for %s: %s", target, exc)
        return None
    fd = wal_handover.try_lock(into)
    if fd is None:
        return None  # one runs already
    try:
        timeline, seq = walnames.parse_segment(name)
        first = _next_contiguous(rt, target, timeline, seq, WINDOW)
        if not first:
            os.close(fd)
            return None  # the end of the archive: nothing to read ahead
        # planned before the reader is up, so the next wal get waits for it instead of fetching the same segment
        wal_handover.write_plan(into, [row.name for row in first])
    except BaseException:
        os.close(fd)
        raise
    return into, fd


def start(rt: Runtime, target: str, name: str, dest: Path) -> bool:
    """After ``wal get`` fetched ``name`` itself: start a read-ahead process from there unless one runs; whether it started one."""
    claimed = _claim(rt, target, name, dest)
    if claimed is None:
        return False
    into, fd = claimed
    try:
        argv = [sys.executable, "-m", "backup_tasks.cli", "--config", str(Path(rt.config.file).resolve()),
                "wal", "prefetch", "--target", target, "--after", name, "--into", str(into.resolve()), "--lock-fd", str(fd)]
        with open(into / wal_handover.LOG, "ab") as errors:
            # its own session: PostgreSQL waits for restore_command's process, never for this one
            subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=errors, start_new_session=True,
                             pass_fds=(fd,))
        return True
    finally:
        os.close(fd)  # the child holds the lock through its own copy


def run(rt: Runtime, target_name: str, after: str, into: Path, lock_fd: int | None = None) -> dict:
    """Fetch the segments after ``after`` into ``into``, keeping ``WINDOW`` ready, until one of the stop reasons holds."""
    try:
        target = wal.physical_target(rt, target_name)
        if not wal_handover.is_private(into):
            return {"target": target.name, "fetched": 0, "stopped": "the read-ahead directory is not private"}
    except BaseException:
        if lock_fd is not None:
            os.close(lock_fd)
        raise
    with wal_handover.locked(into, lock_fd) as mine:
        if not mine:
            return {"target": target.name, "fetched": 0, "stopped": "another read-ahead runs"}
        return _loop(rt, target.name, after, into)


def _loop(rt: Runtime, target: str, after: str, into: Path, stop: threading.Event | None = None) -> dict:
    timeline, seq = walnames.parse_segment(after)
    queue: deque = deque()
    pending: dict = {}
    delivered: set[str] = set()
    fetched, end_of_archive, last_taken = 0, False, time.monotonic()
    written: list[str] | None = None
    with ThreadPoolExecutor(WORKERS, thread_name_prefix="wal-prefetch") as pool:
        try:
            while True:
                if not into.is_dir():
                    return _stopped(target, fetched, "the restore removed the read-ahead directory", pending)
                if stop is not None and stop.is_set():
                    return _stopped(target, fetched, "the restore is over", pending)
                ready = {n for n in delivered if (into / n).exists()}
                if ready != delivered:
                    last_taken = time.monotonic()
                    delivered = ready
                if not queue and not end_of_archive:
                    rows = _next_contiguous(rt, target, timeline, seq, WINDOW)
                    if rows:
                        queue.extend(rows)
                        seq = rows[-1].seq
                    else:
                        end_of_archive = True
                while queue and len(delivered) + len(pending) < WINDOW:
                    row = queue.popleft()
                    for tier in row.tiers:  # opened here, once: a tier's client is not built safely from two threads
                        rt.storage(tier)
                    pending[pool.submit(wal.fetch, rt, row, into / row.name)] = row.name
                plan = [*pending.values(), *(r.name for r in queue)]
                if plan != written:
                    wal_handover.write_plan(into, plan)
                    written = plan
                if not pending and not queue and end_of_archive and not delivered:
                    return _stopped(target, fetched, "no further segment is stored", pending)
                if delivered and time.monotonic() - last_taken > IDLE_SECONDS:
                    _remove_unclaimed(into, delivered)
                    return _stopped(target, fetched, "nothing was taken for a while", pending)
                done, _ = wait(pending, timeout=TICK_SECONDS, return_when=FIRST_COMPLETED) if pending else (set(), None)
                if not pending:
                    time.sleep(TICK_SECONDS)
                for future in done:
                    name = pending.pop(future)
                    future.result()  # a failed fetch ends the read-ahead; wal get fetches that one itself
                    if not delivered:
                        last_taken = time.monotonic()  # idle counts from when something waits to be taken
                    delivered.add(name)
                    fetched += 1
        except Exception:
            log.exception("the WAL read-ahead of %s stopped", target)
            raise
        finally:
            if into.is_dir():  # nothing more will come: a caller waiting on the plan fetches its segment itself
                wal_handover.write_plan(into, [])


def _next_contiguous(rt: Runtime, target: str, timeline: int, seq: int, limit: int) -> list:
    """The next stored segments without a hole: past a missing one, recovery stops asking."""
    rows = []
    for row in rt.catalog.segments_after(target, wal.FAMILY, timeline, seq, limit):
        if row.seq != seq + 1 + len(rows):
            break
        rows.append(row)
    return rows


def _remove_unclaimed(into: Path, names: set[str]) -> None:
    for name in names:
        (into / name).unlink(missing_ok=True)


def _stopped(target: str, fetched: int, why: str, pending: dict) -> dict:
    for future in pending:
        future.cancel()
    return {"target": target, "fetched": fetched, "stopped": why}


def remove(datadir: Path) -> None:
    """Drop a data directory's read-ahead copies (after recovery ended, nothing will ask for them)."""
    shutil.rmtree(Path(datadir) / "pg_wal" / wal_handover.DIR_NAME, ignore_errors=True)
