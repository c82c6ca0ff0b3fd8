"""Events: what happened that someone may need to hear about (failures, refusals, skips).

Each event is logged and written to the catalog's events table, where the alerting
layer picks it up and sends it on. Emitting never raises: a broken catalog must not turn
an already-failing backup into a crash that hides the original error.
"""

from __future__ import annotations

import logging

log = logging.getLogger("backup_tasks.events")

CHAIN_FAILED = "chain.failed"
VERIFY_FAILED = "verify.failed"
VERIFY_INCOMPLETE = "verify.incomplete"
DRILL_FAILED = "drill.failed"
#: storage tiers and retention (issue 4)
UPLOAD_TIER_FAILED = "storage.upload_failed"  # one tier of a multi-tier upload failed; the others hold the backup
TIER_REFUSED = "storage.tier_refused"  # an external tier refused to write (mount missing, read-only, low space)
CLEANUP_FAILED = "cleanup.failed"  # retention could not remove something it planned to remove
#: distributed operation (issue 5)
RUN_SKIPPED = "run.skipped"  # a start found its target already running (per-target lock); nothing was dumped


def emit(catalog, kind: str, message: str, *, severity: str = "error", target: str | None = None, host: str | None = None,
         backup_id: str | None = None, **detail) -> None:
    log.log(logging.ERROR if severity == "error" else logging.WARNING, "%s target=%s backup=%s: %s", kind, target, backup_id, message)
    try:
        catalog.add_event(kind=kind, severity=severity, message=message, target=target, host=host, backup_id=backup_id, detail=detail or None)
    except Exception:  # noqa: BLE001 - see module docstring
        log.exception("could not record event %s for %s", kind, backup_id)
