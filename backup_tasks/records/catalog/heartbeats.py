"""Heartbeats of running runs: which worker process works on a run, and when it last said so.

Why the catalog, and why the stage's own process: a run can lose its worker in ways
nobody reports (SIGKILL of the whole worker, the OOM killer, power loss). Its message
then sits in Redis's ``unacked`` set until the visibility timeout (6 h), or forever if
Redis restarted without persistence. What tells such a run from a slow one is a beat
from the process doing the work: the main worker process may still answer Celery's
pings while the child running the stage is gone, and a restarted worker answers under
the same name without having the task. The catalog holds the beats because it outlives
a broker that lost its data (exactly when messages are lost), and every host and every
watchdog read the same one. One row per run, updated in place.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.orm import sessionmaker

from backup_tasks.records.catalog.schema import BackupRow, RunHeartbeatRow
from backup_tasks.records.run_status import Status
from backup_tasks.timefmt import now


class Heartbeats:
    """The catalog's run_heartbeats table."""

    _session: sessionmaker

    def beat(self, run_id: str, *, target: str, stage: str, working: bool, worker: str, pid: int,
             at: datetime | None = None) -> None:
        """Record that ``worker``/``pid`` works on ``stage`` of the run now (``working``), or hands it on (not)."""
        at = at or now()
        with self._session.begin() as s:
            row = s.get(RunHeartbeatRow, run_id)
            if row is None:
                s.add(RunHeartbeatRow(run_id=run_id, target=target, stage=stage, working=working, worker=worker, pid=pid,
                                      beat_at=at))
            else:
                row.target, row.stage, row.working, row.worker, row.pid, row.beat_at = target, stage, working, worker, pid, at

    def heartbeats(self) -> list[RunHeartbeatRow]:
        """The last beat of every run still ``running``."""
        with self._session() as s:
            return list(s.scalars(select(RunHeartbeatRow).join(BackupRow, BackupRow.id == RunHeartbeatRow.run_id)
                                  .where(BackupRow.status == Status.RUNNING)))

    def prune_heartbeats(self) -> int:
        """Forget the beats of runs that are over (or gone from the catalog); returns how many."""
        running = select(BackupRow.id).where(BackupRow.status == Status.RUNNING)
        with self._session.begin() as s:
            return s.execute(delete(RunHeartbeatRow).where(RunHeartbeatRow.run_id.not_in(running))).rowcount
