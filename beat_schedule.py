"""The beat schedule, built from the targets file: one ``backup.start`` per target, plus the global jobs.

Beat runs with celery-redbeat (``backup_tasks.orchestration.beat_sync.TargetsScheduler``): the entries
built here are stored in Redis, one beat holds the lock and publishes, a standby takes
over when the lock expires, and a changed targets file is synced into Redis while beat
runs. Start it with Celery's own CLI::

    BACKUP_CONFIG=/etc/backup-tasks/targets.toml celery -A backup_tasks beat

Per target: ``backup:<name>`` at the target's ``schedule`` (defaults by kind in
defaults.SCHEDULE_BY_KIND: databases daily 02:00, files Sunday 03:00, config Saturday
01:00) on the target's host queue, carrying only the target name; a files or config
target with ``incremental_schedule`` (or ``differential_schedule``) also gets
``backup:<name>:incremental`` (``:differential``) at that time. Global jobs
(defaults.GLOBAL_JOBS): cleanup daily 03:00, verification of backups left ``uploaded``
daily 04:00 (on ``verify``), the rolling re-verification daily 04:30, restore drills on
Sunday 03:30 (one ``backup.drill`` per target with a ``drill`` table, on ``drill``) and the
RPO watchdog every 15 minutes. Each physical PostgreSQL target also gets ``wal-ship:<name>``,
shipping its WAL spool every minute on its host queue, and each ``binlog = true`` target
``binlog:<name>``: ``backup.binlog_ship`` every minute on its host queue. Cron expressions
are read in ``[settings] timezone``.
"""

from __future__ import annotations

from datetime import timedelta

from backup_tasks import defaults
from backup_tasks.config import schedules
from backup_tasks.config import Config

#: the re-verification runs once a day; its planner needs to know how often it runs
REVERIFY_EVERY = timedelta(days=1)


def cron(expr: str, timezone: str):
    """A Celery schedule for a cron (or ``@every``) expression in ``timezone``."""
    return schedules.parse(expr, timezone)


def build(config: Config) -> dict[str, dict]:
    """Beat entries by name; each publishes only a target name (or nothing) onto its queue."""
    tz = config.settings.timezone
    jobs = {
        name: {"task": task, "schedule": cron(expr, tz), "args": (), "kwargs": {}, "options": {"queue": queue}}
        for name, (task, expr, queue) in defaults.GLOBAL_JOBS.items()
    }
    jobs["reverify"]["kwargs"] = {"every_hours": REVERIFY_EVERY.total_seconds() / 3600}
    for target in config.targets.values():
        runs = [("", "full", target.schedule)]
        runs += [(f":{type_}", type_, expr) for type_, expr in (("incremental", target.incremental_schedule),
                                                                ("differential", target.differential_schedule)) if expr]
        for suffix, type_, expr in runs:
            jobs[f"backup:{target.name}{suffix}"] = {
                "task": "backup.start",
                "schedule": cron(expr, tz),
                "args": (target.name, type_),
                "kwargs": {"actor": "beat"},
                "options": {"queue": target.queue},
            }
    return jobs | binlog_jobs(config) | {
        f"wal-ship:{target.name}": {
            "task": "backup.wal_ship",
            "schedule": cron(defaults.LOG_SHIP_SCHEDULE, tz),
            "args": (target.name,),
            "kwargs": {},
            "options": {"queue": target.queue},
        }
        for target in config.targets.values() if target.kind == "postgres" and target.mode == "physical"
    }


def binlog_jobs(config: Config) -> dict[str, dict]:
    """``binlog:<name>`` every minute for each ``binlog = true`` target, on its host's queue."""
    return {
        f"binlog:{target.name}": {
            "task": "backup.binlog_ship",
            "schedule": cron(defaults.BINLOG_SHIP_SCHEDULE, config.settings.timezone),
            "args": (target.name,),
            "kwargs": {},
            "options": {"queue": target.queue},
        }
        for target in config.targets.values() if target.binlog
    }
