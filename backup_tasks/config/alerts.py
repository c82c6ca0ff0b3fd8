"""Checks of the alert, watchdog and report settings, run when the targets file is loaded.

A typo in an alert URL or a threshold should fail ``backupctl targets`` today, not stay
silent until the night a backup fails and nobody is told. Only the shape of a URL is
checked here (apprise is not imported at load time: every command would pay for it);
a URL apprise cannot use is reported, and logged, when an alert is sent.
"""

from __future__ import annotations

import re

from backup_tasks import defaults
from backup_tasks.errors import ConfigError

_URL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://\S*$")

#: setting -> (lowest, highest) allowed
_RANGES = {
    "alert_repeat_minutes": (0, 7 * 24 * 60),
    "alert_min_free_percent": (0, 100),
    "alert_min_free_bytes": (0, None),
    "size_anomaly_min_percent": (0, 100),
    "size_anomaly_max_percent": (100, None),
    "size_anomaly_history": (defaults.SIZE_ANOMALY_MIN_HISTORY, 1000),
    "report_days": (1, 3660),
}
#: why a lower bound is what it is, where that is not obvious
_WHY = {
    "size_anomaly_history": f"the size check needs at least {defaults.SIZE_ANOMALY_MIN_HISTORY} earlier backups "
                            "to take a median (fewer would switch it off silently)",
}


def check_settings(values: dict, *, file: str) -> None:
    """Raise ConfigError naming the field for a malformed alert URL or an out-of-range threshold."""
    for field in ("alerts", "report_recipients"):
        for url in values.get(field, ()):
            if not isinstance(url, str) or not _URL_RE.match(url):
                shown = url.split("://", 1)[0] + "://..." if isinstance(url, str) and "://" in url else repr(url)[:40]
                raise ConfigError(
                    f"'{shown}' is not a notification URL",
                    'use apprise URLs such as "mailto://user@example.org", "slack://T/B/C" or "json://host/path"',
                    file=file, where="[settings]", field=field,
                )
    for field, (low, high) in _RANGES.items():
        if field not in values:
            continue
        value = values[field]
        if value < low or (high is not None and value > high):
            allowed = f"between {low} and {high}" if high is not None else f"at least {low}"
            why = f": {_WHY[field]}" if field in _WHY else ""
            raise ConfigError(f"{value} is out of range", f"use a whole number {allowed}{why}", file=file,
                              where="[settings]", field=field)
