"""Size anomaly: a backup far smaller (or larger) than usual is a warning sign.

A dump that quietly lost most of its tables, a mount that was empty when ``tar`` ran, a
log table that exploded: each still "succeeds" and verifies, because verification
proves the artifact matches its manifest, not that the source was whole. So right after
upload the stored size is compared with the median of the target's previous backups
(``size_anomaly_history``, default 7); below ``size_anomaly_min_percent`` (50) or above
``size_anomaly_max_percent`` (200) of it emits ``backup.size_anomaly``, which alerting
sends on. The backup itself is kept and not failed: it may be the only copy there is.
"""

from __future__ import annotations

import logging
import statistics
from dataclasses import dataclass

from backup_tasks import defaults
from backup_tasks.records import events

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SizeAnomaly:
    size: int
    median: float
    percent: int
    direction: str  # "smaller" | "larger"


def assess(size: int, history: list[int], *, min_percent: int, max_percent: int,
           min_history: int = defaults.SIZE_ANOMALY_MIN_HISTORY) -> SizeAnomaly | None:
    """Pure: an anomaly if ``size`` is outside [min%, max%] of the median of ``history``.

    With fewer than ``min_history`` earlier backups there is no usual size yet: no verdict.
    """
    if len(history) < min_history:
        return None
    median = statistics.median(history)
    if median <= 0:
        return None
    percent = round(size * 100 / median)
    if size * 100 < median * min_percent:
        return SizeAnomaly(size, median, percent, "smaller")
    if size * 100 > median * max_percent:
        return SizeAnomaly(size, median, percent, "larger")
    return None


def check_after_upload(rt, backup_id: str) -> SizeAnomaly | None:
    """Compare a just-stored backup with its target's recent ones; emit the event. Never raises."""
    try:
        row = rt.catalog.find(backup_id)
        if row is None or row.size_stored is None:
            return None
        s = rt.settings
        history = rt.catalog.recent_sizes(row.target, before=row.created_at, limit=s.size_anomaly_history, exclude=row.id)
        found = assess(row.size_stored, history, min_percent=s.size_anomaly_min_percent,
                       max_percent=s.size_anomaly_max_percent)
        if found is not None:
            events.emit(rt.catalog, events.SIZE_ANOMALY,
                        f"backup {row.id} of '{row.target}' stored {row.size_stored:,} bytes, {found.percent}% of the median "
                        f"{found.median:,.0f} bytes of its last {len(history)} backups (alert below "
                        f"{s.size_anomaly_min_percent}% or above {s.size_anomaly_max_percent}%)",
                        severity="warning", target=row.target, host=row.host, backup_id=row.id, percent=found.percent,
                        size_bytes=row.size_stored, median_bytes=round(found.median), direction=found.direction)
        return found
    except Exception:  # noqa: BLE001 - a monitoring check must never fail the backup it looks at
        log.exception("size check of %s failed", backup_id)
        return None
