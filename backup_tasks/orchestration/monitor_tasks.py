"""Celery tasks of the monitoring layer, on the ``maintenance`` queue (the app's default queue).

``backup.watchdog`` (beat: every 15 minutes) fails runs whose worker died, finds RPO
breaches, low free space and missing mounts and alerts once per condition; ``backup.report`` (beat: weekly) mails the
DR readiness report. Both are thin: they call watchdog.py / report.py and return a small
JSON summary (no secrets, no report body).
"""

from __future__ import annotations

from backup_tasks.ops import runtime
from backup_tasks.ops.report import mail
from backup_tasks.ops.watchdog import run_watchdog
from backup_tasks.orchestration import queued_messages, run_lock
from backup_tasks.orchestration.celery_app import app


@app.task(name="backup.watchdog", acks_late=True, reject_on_worker_lost=True)
def watchdog() -> dict:
    """Check RPO, free space and mounts now; idempotent (conditions alert once), so redelivery is harmless."""
    rt = runtime.current()
    return run_watchdog(rt, release_lock=run_lock.releaser(rt.settings), has_message=queued_messages.finder(rt))


@app.task(name="backup.report")
def report() -> dict:
    """Build the DR readiness report and mail it to report_recipients (default: the alert URLs)."""
    return mail(runtime.current())
