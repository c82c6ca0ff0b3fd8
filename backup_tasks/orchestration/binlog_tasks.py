"""``backup.binlog_ship``: ship a binlog target's closed binary logs, every minute, on its host's queue.

Thin: the work is ``ops/mysql_pitr/ship.py``. It takes only the target name; the worker
resolves the password itself. Shipping is idempotent and locked per target, so a
redelivery, or a run that overlaps a slow one, does no harm; expiry keeps a backlog of
identical messages (a worker down for an hour) from running sixty times: the next
minute's message ships everything anyway.
"""

from __future__ import annotations

from backup_tasks.orchestration.celery_app import app


@app.task(bind=True, name="backup.binlog_ship", acks_late=True, reject_on_worker_lost=True, expires=120)
def binlog_ship(self, target: str) -> dict:
    from backup_tasks.ops import runtime
    from backup_tasks.ops.mysql_pitr.ship import ship
    from backup_tasks.orchestration import config_reload

    rt = runtime.current() if self.request.is_eager else config_reload.fresh()
    return ship(rt, target)
