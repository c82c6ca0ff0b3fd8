"""The steps of a restore drill of a physical PostgreSQL target (the drill itself is ops/postgres_pitr/physical_drill.py).

A logical drill compares a restored dump with the counts its manifest signed. A base
backup carries no counts worth comparing: the copy is replayed past it, to a recent
moment. So the drill makes its own moment: it takes a *counted point* in the live
cluster (row counts and the exact WAL position they hold at, counted_point.py), waits
until the WAL holding that point is stored, restores the newest base before it and
replays to that LSN in a temporary data directory, starts the copy on a free port and
counts there. The counts then compare with ``=`` even while the cluster is busy, which a
target *time* could not give: commit timestamps and snapshots do not follow WAL order
exactly under concurrent commits.

The copy never archives (the restore writes ``archive_mode = off``), listens on
127.0.0.1 only, without a Unix socket, and is stopped and removed by the drill whatever
happened.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import tempfile
import time
from pathlib import Path

from backup_tasks.errors import PermanentError
from backup_tasks.ops.postgres_pitr import restore as pitr_restore, wal
from backup_tasks.ops.postgres_pitr.logship import spool_for
from backup_tasks.ops.runtime import Runtime
from backup_tasks.sources.db import dsn
from backup_tasks.sources.postgres import counted_point, server, walnames

#: how often the drill looks whether the WAL holding its point is stored yet
WAL_POLL_SECONDS = 2.0


def take_point(target, database: str) -> dict:
    """Counts and WAL position in the live cluster, then a record after it and, if allowed, a WAL switch."""
    source = dsn.for_target(target).on(database)
    point = counted_point.counted_point(source)
    point["switched"] = counted_point.close_segment(source) is not None
    return point


def wait_for_wal(rt: Runtime, target, lsn: str, deadline: float, base_manifest: dict) -> dict:
    """Wait until the segment holding ``lsn`` is stored and recorded; ship the local spool meanwhile if this host has it.

    On the database host (the spool is here) the drill ships what waits rather than
    wait for the minute's shipping task; elsewhere it waits for that task.
    """
    segment_size = (base_manifest.get("source") or {}).get("wal_segment_size") or walnames.DEFAULT_SEGMENT_SIZE
    needed = walnames.segno_of_lsn(walnames.parse_lsn(lsn), segment_size)
    spool = spool_for(rt, target.name)
    started, shipped = time.monotonic(), 0
    while True:
        if spool.dir.is_dir():
            shipped += len(wal.ship(rt, target.name).get("shipped", []))
        stored = [r.seq for r in rt.catalog.logs(target.name, wal.FAMILY) if r.kind == "segment" and r.seq is not None]
        if stored and max(stored) >= needed:
            return {"segment_needed": walnames.segment_name(1, needed, segment_size)[8:], "shipped_by_drill": shipped,
                    "wal_wait_seconds": round(time.monotonic() - started, 3)}
        if time.monotonic() > deadline:
            raise PermanentError(f"the WAL holding the drill's point {lsn} was not stored before the drill's time ran out",
                                 "check that WAL is archived (archive_timeout) and shipped (backupctl pitr TARGET)")
        time.sleep(WAL_POLL_SECONDS)


def _scratch_roots(rt: Runtime, target_name: str) -> list[tuple[Path, str]]:
    """Where scratch_dir makes a drill's directory: under the staging root, or (as root) the system's temporary directory."""
    return [(rt.staging_root(), f"drill-{target_name}-"), (Path(tempfile.gettempdir()), f"backup-tasks-drill-{target_name}-")]


def scratch_dir(rt: Runtime, target_name: str) -> Path:
    """A private directory for the copy's data directory, that the cluster's OS user can enter.

    As that user, under the staging root (private, and sized for backups). As root, whose
    staging root the cluster's user cannot enter, in the system's temporary directory,
    handed to that user and kept 0700.
    """
    (staging, mine), (system, as_root) = _scratch_roots(rt, target_name)
    if os.geteuid() != 0:
        return Path(tempfile.mkdtemp(prefix=mine, dir=staging))
    path = Path(tempfile.mkdtemp(prefix=as_root, dir=system))
    entry = pwd.getpwnam(pitr_restore.CLUSTER_OS_USER)
    os.chown(path, entry.pw_uid, entry.pw_gid)
    os.chmod(path, 0o700)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def restore_copy(rt: Runtime, target, point: dict, datadir: Path, deadline: float) -> tuple[dict, dsn.Server]:
    """Restore to the point's LSN into ``datadir``, started on a free port; the restore's report and the copy's server."""
    port = free_port()
    done = pitr_restore.restore_to_time(rt, target.name, point["at"], datadir, start=True, port=port,
                                        timeout=max(1.0, deadline - time.monotonic()), target_lsn=point["lsn"])
    live = dsn.for_target(target)
    copy = dsn.Server(engine=live.engine, host="127.0.0.1", port=port, user=live.user, database=live.database,
                      params=live.params, password=live.password)
    return done, copy


def remove_copy(rt: Runtime, target, datadir: Path, scratch: Path) -> None:
    """Stop the copy (immediately: it is thrown away) and remove its directory."""
    if (datadir / "PG_VERSION").exists():
        version = (datadir / "PG_VERSION").read_text().strip()
        bin_dir = server.bin_dir_for(version, target.options.get("bin_dir"))
        server.stop(datadir, bin_dir=bin_dir, os_user=pitr_restore.CLUSTER_OS_USER, mode="immediate")
    shutil.rmtree(scratch)


def sweep(rt: Runtime, target, older_than_seconds: float) -> list[str]:
    """Stop and remove the copies of this target's drills that a killed worker left (older than the drill's time limit)."""
    swept = []
    cutoff = time.time() - older_than_seconds
    for root, prefix in _scratch_roots(rt, target.name):
        for path in sorted(root.glob(prefix + "*")) if root.is_dir() else []:
            if path.is_dir() and path.stat().st_mtime < cutoff:
                remove_copy(rt, target, path / "data", path)
                swept.append(str(path))
    return swept
