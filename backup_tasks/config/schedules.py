"""Schedule expressions of the targets file: five-field cron, or ``@every <duration>``.

    schedule = "0 2 * * *"        # cron: minute hour day-of-month month day-of-week
    schedule = "@every 4h"        # a fixed interval: s, m, h or d (e.g. "@every 90m")

Cron is what operators write for nightly backups. ``@every`` (robfig/cron's syntax) is
for frequent small backups and for tests, which cannot wait for the next minute. Both
become Celery schedules that redbeat stores; the config loader validates with the same
parser, so a typo fails at load time, not at 02:00.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

if TYPE_CHECKING:
    from celery.schedules import crontab, schedule

EVERY_RE = re.compile(r"^@every\s+(\d+)\s*([smhd])$")
UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse(expr: str, timezone: str = "UTC") -> crontab | schedule:
    """A Celery schedule for ``expr``; raises ValueError saying what is wrong."""
    # Celery (and kombu under it) costs a CLI command a large part of its start-up; a targets
    # file without schedules, or a command that never loads one, should not pay for it.
    from celery.schedules import crontab, schedule

    if not isinstance(expr, str):
        raise ValueError("a schedule is a string")
    every = EVERY_RE.match(expr.strip())
    if every:
        seconds = int(every.group(1)) * UNIT_SECONDS[every.group(2)]
        if seconds < 1:
            raise ValueError("an @every interval must be at least 1s")
        return schedule(timedelta(seconds=seconds))
    if expr.strip().startswith("@"):
        raise ValueError("the only @ form is '@every <n><s|m|h|d>', e.g. '@every 4h'")
    fields = expr.split()
    if len(fields) != 5:
        raise ValueError(f"expected 5 fields (minute hour day-of-month month day-of-week), got {len(fields)}")
    minute, hour, day_of_month, month_of_year, day_of_week = fields
    cron = crontab(minute=minute, hour=hour, day_of_month=day_of_month, month_of_year=month_of_year,
                   day_of_week=day_of_week)
    cron.tz = ZoneInfo(timezone)
    return cron
