"""Events: what happened that someone may need to hear about (failures, refusals, skips).

Each event is logged, written to the catalog's events table, and then handed to the
notifier, if one is set. The records layer cannot know where alerts go (that is the
process's configuration, held above it), so the layer that makes a runtime current sets
the notifier (ops/runtime.py, which sends through alerting/). Emitting never raises: a
broken catalog or a dead notification channel must not turn an already-failing backup
into a crash that hides the original error.
"""

from __future__ import annotations

import logging
from typing import Callable

log = logging.getLogger("backup_tasks.records.events")

CHAIN_FAILED = "chain.failed"
VERIFY_FAILED = "verify.failed"
VERIFY_INCOMPLETE = "verify.incomplete"
DRILL_FAILED = "drill.failed"
#: storage tiers and retention
UPLOAD_TIER_FAILED = "storage.upload_failed"  # one tier of a multi-tier upload failed; the others hold the backup
TIER_REFUSED = "storage.tier_refused"  # an external tier refused to write (mount missing, read-only, low space)
CLEANUP_FAILED = "cleanup.failed"  # retention could not remove something it planned to remove
#: distributed operation
RUN_SKIPPED = "run.skipped"  # a start found its target already running (per-target lock); nothing was dumped
RUN_ABANDONED = "run.abandoned"  # a running stage's worker died unseen (no heartbeat), or the broker lost its next stage; failed and freed
#: monitoring: the watchdog's conditions, and the size check after upload
RPO_BREACH = "rpo.breach"  # no verified backup within the target's rpo_hours
LOW_SPACE = "storage.low_space"  # a local or external tier is low on free space
MOUNT_MISSING = "storage.mount_missing"  # an external tier's mount point is not mounted
SIZE_ANOMALY = "backup.size_anomaly"  # a stored artifact far below or above the target's recent median
#: point-in-time recovery: archived logs and the restorable window
LOG_CONFLICT = "pitr.log_conflict"  # a log file offered again with other contents; archiving of the target is stopped
SPOOL_FULL = "pitr.spool_full"  # the host's spool of archived logs is over spool_max_bytes (nothing is dropped)
PITR_LAG = "pitr.lag"  # the newest stored log is older than the target's pitr_rpo_minutes
PITR_GAP = "pitr.gap"  # a log file is missing from the archive: the restorable window is broken
#: point-in-time recovery of binlog targets
BINLOG_CONFLICT = "binlog.conflict"  # a binlog arrived under a stored one's name with other content; not stored
BINLOG_GAP = "binlog.gap"  # binlogs were purged on the server before they were shipped: the window has a hole
BINLOG_LAG = "binlog.lag"  # the newest shipped binlog is older than the target's pitr_rpo_minutes (watchdog)
#: keys
KEY_MAX_AGE = "keys.max_age"  # a current encryption key has been current longer than key_max_age_days: rotate it
RESOLVED = ".resolved"  # suffix: the watchdog condition <kind> has cleared
#: opened and closed by the watchdog: alerted once per change of state, so not rate-limited
WATCHDOG_CONDITIONS = (RPO_BREACH, LOW_SPACE, MOUNT_MISSING, PITR_LAG, PITR_GAP, BINLOG_LAG, KEY_MAX_AGE)
VERIFIED = "backup.verified"  # a run's own verification passed (a notice with alert_on_success; not recorded)


#: called as notifier(catalog, kind=, severity=, message=, target=, host=, backup_id=, detail=);
#: returns the alert's delivery, or None when no alert was tried
Notifier = Callable[..., object]

_notifier: Notifier | None = None


def set_notifier(notifier: Notifier | None) -> Notifier | None:
    """Hand every later event to ``notifier`` (None: logged and recorded only); returns the one replaced.

    One per process: the newest call wins, because a process alerts through one configuration.
    """
    global _notifier
    previous, _notifier = _notifier, notifier
    return previous


def emit(catalog, kind: str, message: str, *, severity: str = "error", target: str | None = None, host: str | None = None,
         backup_id: str | None = None, record: bool = True, **detail):
    """Log, record and alert on one event; returns the alert's ``Delivery`` (None if no alert was tried).

    ``record=False`` only alerts again (the watchdog re-sending an alert that reached nobody):
    the event itself is in the catalog once.
    """
    log.log({"error": logging.ERROR, "info": logging.INFO}.get(severity, logging.WARNING), "%s target=%s backup=%s: %s", kind, target, backup_id, message)
    try:
        if record:
            catalog.add_event(kind=kind, severity=severity, message=message, target=target, host=host, backup_id=backup_id,
                              detail=detail or None)
    except Exception:  # noqa: BLE001 - see module docstring
        log.exception("could not record event %s for %s", kind, backup_id)
    notifier = _notifier
    if notifier is None:
        return None
    try:
        return notifier(catalog, kind=kind, severity=severity, message=message, target=target, host=host,
                        backup_id=backup_id, detail=detail or None)
    except Exception:  # noqa: BLE001 - see module docstring
        log.exception("could not send the alert for event %s of %s", kind, backup_id or target)
        return None
