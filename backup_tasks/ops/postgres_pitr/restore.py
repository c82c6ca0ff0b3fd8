"""Restore a physical PostgreSQL target to a moment: base backup + WAL replayed to TIME in a new data directory.

The moment must lie in the restorable window (ops/postgres_pitr/window.py); the base is the newest
restorable one that ended at or before it. The base is extracted and its digests
checked against the signed manifest *before* the recovery settings are written, so a
damaged base never turns into a server that starts. With ``start`` the server is
started on the port asked for and the restore waits until recovery has ended (the
server promoted at the target), then reports the time and LSN it actually reached.
"""

from __future__ import annotations

import shlex
import time
from datetime import datetime, timezone
from pathlib import Path

from backup_tasks import defaults
from backup_tasks.errors import InputError
from backup_tasks.ops import readback
from backup_tasks.ops.postgres_pitr import window as pitr, wal_prefetch
from backup_tasks.ops.runtime import Runtime
from backup_tasks.policy import pitr as policy
from backup_tasks.sources.db import dsn
from backup_tasks.sources.postgres import datadir, server
from backup_tasks.timefmt import iso

#: the OS user a restore run by root hands the data directory to and starts the server as
CLUSTER_OS_USER = "postgres"


def _window_text(win: policy.Window) -> str:
    if not win.spans:
        return "nothing is restorable yet (no verified base backup with its WAL stored)"
    spans = "; ".join(f"{iso(s.start)} to {iso(s.end)}" for s in win.spans)
    return f"the restorable window is {spans}"


def restore_command(rt: Runtime, target: str) -> str:
    config = shlex.quote(str(Path(rt.config.file).resolve()))
    return f"{rt.settings.backupctl_command} --config {config} wal get --target {shlex.quote(target)} %f %p"


def restore_to_time(rt: Runtime, target_name: str, when: datetime, dest: Path, *, start: bool = False, port: int | None = None,
                    force: bool = False, dry_run: bool = False, timeout: float = defaults.PITR_RECOVERY_TIMEOUT_SECONDS,
                    target_lsn: str | None = None) -> dict:
    """Restore to ``when``; with ``target_lsn`` (a drill's counted point) ``when`` picks the base and replay stops at the LSN.

    An LSN target must be reached: replay that ends before it is a failure, never "all
    stored WAL", because the caller compares the copy with the state at that LSN.
    """
    if when.tzinfo is None:
        raise InputError(f"{when.isoformat()} has no time zone", "write the time with its zone, e.g. 2026-12-05T07:00:00Z")
    if start and not port:
        raise InputError("--start needs --port P", "pick a free port for the restored server")
    bases, pieces, _extra = pitr.gather(rt, target_name)
    target = rt.target(target_name)
    win = policy.window(bases, pieces)
    base = policy.base_for(win, bases, when)
    if base is None:
        where = "inside a gap of the archive" if win.spans and win.earliest <= when <= win.latest else "outside the window"
        raise InputError(f"{iso(when)} cannot be restored for target '{target_name}': it is {where}; {_window_text(win)}",
                         "pick a time inside the window (backupctl pitr TARGET shows it)")
    occupied = datadir.prepare(dest, force=force, dry_run=True)
    command = restore_command(rt, target.name)
    plan = {"target": target.name, "base_id": base.id, "target_time": iso(when), "target_lsn": target_lsn, "to_datadir": str(dest),
            "base_ended_at": iso(base.ready_at), "window": {"earliest": iso(win.earliest), "latest": iso(win.latest)},
            "restore_command": command}
    if dry_run:
        return {**plan, "dry_run": True, "replaces_existing": occupied, "would_start_on_port": port if start else None,
                "reached_time": None}
    datadir.prepare(dest, force=force, dry_run=False)
    started = time.monotonic()
    row = rt.catalog.get(base.id)
    found = readback.locate(rt, row)
    with readback.plaintext(rt, found) as (stream, stored, plain):
        extracted = datadir.extract(stream, dest, found.doc["source"])
        plain.drain()
    readback.check_digests(found.doc, stored, plain)
    stamp = when.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f+00")
    datadir.write_recovery(dest, restore_command=command, target_time=None if target_lsn else stamp, target_lsn=target_lsn)
    # before the hand-over, so that the copies belong to the server's user
    ahead = wal_prefetch.prepare(rt, target.name, dest, found.doc["source"]["start_segment"], read_ahead=start)
    try:
        return _replay(rt, target, found, dest, command, plan, extracted, started, start=start, port=port, timeout=timeout,
                       target_lsn=target_lsn, ahead=ahead)
    finally:
        if ahead is not None:
            ahead.close()


def _replay(rt: Runtime, target, found, dest: Path, command: str, plan: dict, extracted: dict, started: float, *,
            start: bool, port: int | None, timeout: float, target_lsn: str | None,
            ahead: wal_prefetch.ReadAhead | None) -> dict:
    """Hand the extracted directory to the cluster's user and, with ``start``, start it and wait for the end of recovery."""
    server.hand_over(dest, CLUSTER_OS_USER)
    # where the time of a restore goes: reading the base back and extracting it, then PostgreSQL's replay
    result = {**plan, "dry_run": False, "files": extracted["files"], "extract_seconds": round(time.monotonic() - started, 2),
              "started": False, "port": None,
              "reached_time": None, "reached_lsn": None, "notes": found.notes}
    if not start:
        return {**result, "next_step": f"pg_ctl -D {dest} -o '-p PORT' start (as the cluster's OS user); once it has promoted, "
                                        f"remove {dest / 'pg_wal' / wal_prefetch.DIR_NAME} (copies of WAL fetched ahead)"}
    bin_dir = server.bin_dir_for(found.doc["source"]["server_version"], target.options.get("bin_dir"))
    log = server.start(dest, port, bin_dir=bin_dir, os_user=CLUSTER_OS_USER)
    conn = dsn.for_target(target)
    conn = dsn.Server(engine=conn.engine, host="127.0.0.1", port=port, user=conn.user, database=conn.database,
                      params=conn.params, password=conn.password)
    try:
        reached = server.wait_for_promotion(conn, dest, log, bin_dir=bin_dir, os_user=CLUSTER_OS_USER, timeout=timeout)
    except server.TargetNotReached:
        if target_lsn:
            raise
        # No commit after TIME is stored (TIME is at the window's end, or the server was idle):
        # all of the stored WAL happened before TIME, so replaying all of it *is* the state at TIME.
        datadir.write_recovery(dest, restore_command=command, target_time=None)
        server.hand_over(dest, CLUSTER_OS_USER)
        log = server.start(dest, port, bin_dir=bin_dir, os_user=CLUSTER_OS_USER)
        reached = server.wait_for_promotion(conn, dest, log, bin_dir=bin_dir, os_user=CLUSTER_OS_USER, timeout=timeout)
        result["notes"] = [*result["notes"], "no commit after the target time is stored: all stored WAL was replayed"]
    if ahead is not None:
        ahead.close()  # before its directory goes: a fetch cut off by the removal would report an error
        result["read_ahead"] = ahead.result  # how many segments it fetched, and why it stopped
    wal_prefetch.remove(dest)  # segments read ahead past the target: recovery is over, nothing will take them
    result["recovery_seconds"] = round(time.monotonic() - started - result["extract_seconds"], 2)
    return {**result, "started": True, "port": port, "reached_time": iso(reached["reached_time"]),
            "reached_lsn": reached["reached_lsn"], "timeline": reached["timeline"], "log": str(log)}
