"""Celery task shipping a point-in-time target's spool of archived logs (beat: every minute).

It runs on the target's host queue, because the spool is a directory on that host.
Thin: the work is ops/postgres_pitr/wal.py (and postgres_pitr/logship.py beneath it); the result is a small JSON
summary of names and byte counts.
"""

from __future__ import annotations

from backup_tasks.ops import runtime
from backup_tasks.orchestration.celery_app import app


@app.task(name="backup.wal_ship", acks_late=True, reject_on_worker_lost=True)
def wal_ship(target: str) -> dict:
    """Ship what is spooled now; idempotent (a file is recorded once and leaves the spool only once stored)."""
    from backup_tasks.ops.postgres_pitr import wal

    return wal.ship(runtime.current(), target)
