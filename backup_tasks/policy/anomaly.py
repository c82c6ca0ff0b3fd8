"""Size anomaly: a backup far smaller (or larger) than usual is a warning sign.

A dump that quietly lost most of its tables, a mount that was empty when ``tar`` ran, a
log table that exploded: each still "succeeds" and verifies, because verification
proves the artifact matches its manifest, not that the source was whole. So right after
upload the stored size is compared with the median of the target's previous backups
(``size_anomaly_history``, default 7); below ``size_anomaly_min_percent`` (50) or above
``size_anomaly_max_percent`` (200) of it is an anomaly. This module only decides;
``ops/size_check.py`` reads the sizes from the catalog and emits ``backup.size_anomaly``,
which alerting sends on. The backup itself is kept and not failed: it may be the only
copy there is.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from backup_tasks import defaults


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

