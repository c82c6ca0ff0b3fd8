"""The size check after upload: gather a backup's size and its target's recent ones, alert on an anomaly.

The decision is ``policy.anomaly.assess``; this is the half that reads the catalog and
emits the event, run by the backup chain right after a backup is stored.
"""

from __future__ import annotations

import logging

from backup_tasks.policy import anomaly
from backup_tasks.records import events

log = logging.getLogger(__name__)


def check_after_upload(rt, backup_id: str) -> anomaly.SizeAnomaly | None:
    """Compare a just-stored backup with its target's recent ones; emit the event. Never raises."""
    try:
        row = rt.catalog.find(backup_id)
        if row is None or row.size_stored is None:
            return None
        s = rt.settings
        history = rt.catalog.recent_sizes(row.target, before=row.created_at, limit=s.size_anomaly_history, exclude=row.id)
        found = anomaly.assess(row.size_stored, history, min_percent=s.size_anomaly_min_percent,
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
