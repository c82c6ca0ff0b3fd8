"""Runs whose worker is gone: find them, fail them with the reason, free what they held.

A worker killed as a whole (SIGKILL, the OOM killer, power loss) reports nothing: no
error callback runs, so its run stays ``running``, its target's lock is held until the
lock's TTL runs out, and its staging files stay on the host's disk. Its stage's message
comes back only after the broker's visibility timeout (6 h), or never if the broker lost
it. The stage's own process beats in the catalog while it works
(records/catalog/heartbeats.py says why there); a working stage silent for longer than
``run_heartbeat_timeout`` has lost its worker (policy/abandoned.py decides).

``reap`` then, for each such run: marks it failed with a reason naming the worker,
stage and last beat (atomically, so two reapers fail it once); emits ``run.abandoned``,
which alerts; removes its staging directory when that is on this host (otherwise the
host's own next start or cleanup does: see ``sweep_staging``); and frees its target's
lock through the caller's ``release_lock`` (the lock is Celery's business, a layer up).
Two callers: the watchdog (every 15 minutes), and ``backup.start`` when it finds the
target locked by a run that is over or abandoned, so the next backup never waits for
the watchdog. A message of the reaped run that is redelivered later finds the run
failed and is dropped (orchestration/redelivery.py).
"""

from __future__ import annotations

import logging
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable

from backup_tasks.errors import InputError
from backup_tasks.policy.abandoned import abandoned
from backup_tasks.records import events
from backup_tasks.records.catalog import Status
from backup_tasks.timefmt import iso

log = logging.getLogger(__name__)

#: ``release_lock(target, run_id)``: free the target's run lock if that run holds it
ReleaseLock = Callable[[str, str], None]


def reap(rt, now: datetime | None = None, *, release_lock: ReleaseLock | None = None,
         only: str | None = None) -> list[dict]:
    """Fail every running run (or just ``only``) whose working stage stopped beating; return what was reaped."""
    now = now or datetime.now(timezone.utc)
    timeout = rt.settings.run_heartbeat_timeout
    beats = {b.run_id: b for b in rt.catalog.heartbeats() if only is None or b.run_id == only}
    reaped = []
    for run_id in abandoned([(b.run_id, b.working, b.beat_at) for b in beats.values()], now,
                            timeout=timedelta(seconds=timeout)):
        beat = beats[run_id]
        silent = int((now - beat.beat_at).total_seconds())
        reason = (f"abandoned: its worker {beat.worker} (pid {beat.pid}) stopped during {beat.stage}, no heartbeat since "
                  f"{iso(beat.beat_at)} ({silent}s, run_heartbeat_timeout is {timeout}s); the worker process died "
                  "(killed, out of memory, or its host went down)")
        if rt.catalog.fail_run(run_id, reason) != "failed":
            continue  # finished, or failed by another reaper, meanwhile
        host = _host(rt, beat.target)
        events.emit(rt.catalog, events.RUN_ABANDONED, f"run {run_id} of target '{beat.target}' {reason}", target=beat.target,
                    host=host, backup_id=run_id, stage=beat.stage, worker=beat.worker, pid=beat.pid,
                    last_heartbeat=iso(beat.beat_at),
                    remedy=f"look for why the worker on {host or beat.worker} died (its log, dmesg for the OOM killer); "
                           f"the target's next backup runs as scheduled, or now: backupctl backup {beat.target} --wait")
        staging = _remove_staging(rt, run_id)
        if release_lock is not None:
            try:
                release_lock(beat.target, run_id)
            except Exception:  # noqa: BLE001 - the next start takes over a lock held by a failed run anyway
                log.warning("could not release the run lock of %s held by abandoned run %s", beat.target, run_id,
                            exc_info=True)
        reaped.append({"backup_id": run_id, "target": beat.target, "stage": beat.stage, "worker": beat.worker,
                       "pid": beat.pid, "last_heartbeat": iso(beat.beat_at), "silent_seconds": silent,
                       "staging_removed": staging, "reason": reason})
    rt.catalog.prune_heartbeats()
    return reaped


def is_over(rt, run_id: str, *, release_lock: ReleaseLock | None = None) -> bool:
    """Whether ``run_id`` no longer needs its target's lock: it ended, or was abandoned (and is reaped now).

    A run the catalog does not know is not over: its start may hold the lock and be
    about to record it.
    """
    row = rt.catalog.find(run_id)
    if row is None:
        return False
    if row.status != Status.RUNNING:
        return True
    return bool(reap(rt, release_lock=release_lock, only=run_id))


def sweep_staging(rt) -> list[str]:
    """Remove this host's staging directories of runs that are over; return their paths.

    A run reaped on another host (the watchdog runs anywhere) left its staging here; the
    next start on this host removes it. Directories of runs the catalog does not know are
    left to cleanup's debris rule (a day old), since their run may be being recorded now.
    """
    root = Path(rt.settings.staging_dir)
    removed = []
    if not root.is_dir():
        return removed
    for entry in root.iterdir():
        if not entry.is_dir() or entry.name.startswith("."):
            continue
        row = rt.catalog.find(entry.name)
        if row is not None and row.status != Status.RUNNING:
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(str(entry))
    return removed


def _remove_staging(rt, run_id: str) -> str | None:
    path = Path(rt.settings.staging_dir) / run_id
    if not path.is_dir():
        return None
    shutil.rmtree(path, ignore_errors=True)
    return str(path)


def _host(rt, target: str) -> str | None:
    try:
        return rt.target(target).host
    except InputError:
        return None
