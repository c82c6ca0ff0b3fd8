"""Re-encryptions an Object Lock deferred, picked up again once the lock has ended.

A backup whose copy is under Object Lock cannot lose its old object before the lock
ends, so its re-encryption is skipped and audited as ``deferred`` with the lock's end
(reencrypt.py). Nobody should have to remember to come back weeks later: beat's daily
``reencrypt-after-lock`` job asks this module which deferred backups are due and sends
each one's ``backup.reencrypt`` again. The audit log is the record because it already
holds every backup's re-encryption outcomes in order: the newest one decides. A backup
whose newest outcome is ``ok`` or ``failed`` is not retried (a failure is for a person
to look at), and neither is one whose lock was extended (its next skip is a newer
``deferred`` with the new end).
"""

from __future__ import annotations

from datetime import datetime

from backup_tasks import timefmt
from backup_tasks.ops.keys import reencrypt
from backup_tasks.ops.runtime import Runtime
from backup_tasks.records import audit


def due(rt: Runtime, now: datetime) -> list[dict]:
    """The deferred re-encryptions whose lock has ended by ``now`` and that still have work: ``backup_id``, ``from_key``."""
    newest: dict[str, object] = {}
    for entry in rt.catalog.audit(action=reencrypt.AUDIT_ACTION):  # newest first
        if entry.backup_id:
            newest.setdefault(entry.backup_id, entry)
    waiting = {row.id for row in reencrypt.select(rt)}
    out = []
    for backup_id, entry in newest.items():
        detail = entry.detail or {}
        until = timefmt.parse(detail.get("locked_until"))
        if entry.outcome == audit.DEFERRED and until is not None and until <= now and backup_id in waiting:
            out.append({"backup_id": backup_id, "from_key": detail.get("from_key"), "locked_until": timefmt.iso(until)})
    return sorted(out, key=lambda d: (d["locked_until"], d["backup_id"]))
