"""The beat schedule, built from the targets file: one ``backup.start`` per target at its cron.

Celery beat loads it through the app (``celery -A backup_tasks.celery_app beat``); the
distribution work adds redbeat's single-active-beat lock and the remaining global jobs
(verify, drills, RPO watchdog) beside the daily cleanup here.
"""

from __future__ import annotations

from celery.schedules import crontab

from backup_tasks.config import Config


def cron(expr: str, timezone: str) -> crontab:
    minute, hour, day_of_month, month_of_year, day_of_week = expr.split()
    schedule = crontab(minute=minute, hour=hour, day_of_month=day_of_month, month_of_year=month_of_year,
                       day_of_week=day_of_week)
    schedule.tz = timezone
    return schedule


#: global jobs: (task, cron, queue); the distribution work adds verify, drills and the RPO watchdog
GLOBAL_JOBS = {
    "cleanup": ("backup.cleanup", "0 3 * * *", "maintenance"),  # retention and debris, daily at 03:00
}


def build(config: Config) -> dict[str, dict]:
    """Beat entries by name; each publishes only a target name onto that target's host queue."""
    jobs = {
        name: {"task": task, "schedule": cron(expr, config.settings.timezone), "kwargs": {}, "options": {"queue": queue}}
        for name, (task, expr, queue) in GLOBAL_JOBS.items()
    }
    return jobs | {
        f"backup:{target.name}": {
            "task": "backup.start",
            "schedule": cron(target.schedule, config.settings.timezone),
            "args": (target.name, "full"),
            "kwargs": {"actor": "beat"},
            "options": {"queue": target.queue},
        }
        for target in config.targets.values()
    }
