"""Delete one backup by id (``backupctl delete ID``, ``DELETE /api/v1/backups/{id}``).

It refuses, with the reason and before touching anything, what retention would never
remove either: the newest verified and the newest drill-proven backup of its target, a
run still in progress, the parent of an incremental or differential backup that stays,
and a copy whose S3 Object Lock is still in force. The facts come from cleanup.gather,
the protection rules from retention.protections, and copies are removed by
cleanup.remove_copy in its safe order (artifact, then markers, then the catalog), so a
hand deletion and a scheduled cleanup can never disagree about what is safe.
"""

from __future__ import annotations

from datetime import datetime, timezone
from types import SimpleNamespace

from backup_tasks.records import audit
from backup_tasks.ops import cleanup
from backup_tasks.policy import retention
from backup_tasks.records.catalog import Status
from backup_tasks.errors import DeleteRefused
from backup_tasks.ops.runtime import Runtime


def refusals(rt: Runtime, backup_id: str, now: datetime | None = None) -> list[str]:
    """Why ``backup_id`` may not be deleted now; empty when it may."""
    now = now or datetime.now(timezone.utc)
    row = rt.catalog.get(backup_id)
    if row.status == Status.RUNNING:
        return ["still running"]  # with or without copies yet: its chain would write after us
    retired = sorted({loc.tier for loc in row.locations} - set(rt.config.tiers))
    if retired:  # its copy there can be neither removed nor checked for an Object Lock
        return [f"has a copy on tier '{t}', which is no longer configured (add the tier back to delete it)" for t in retired]
    # gather needs only the target's name: a target since removed from the config keeps its protections
    backups = cleanup.gather(rt, [SimpleNamespace(name=row.target)], now)
    this = next((b for b in backups if b.id == backup_id), None)
    if this is None:
        return []
    reasons = list(retention.protections(backups).get(backup_id, []))
    reasons += [f"parent of {b.type} backup {b.id}, which stays" for b in backups if b.parent_id == backup_id and b.copies
                and b.status != Status.DELETED]
    reasons += [f"object-locked on tier '{c.tier}' until {c.locked_until.isoformat()}" for c in this.copies
                if c.locked_until is not None and c.locked_until > now]
    return reasons


def delete_backup(rt: Runtime, backup_id: str, *, actor: str, now: datetime | None = None) -> dict:
    """Remove every stored copy of one backup and mark it ``deleted``; DeleteRefused if it is protected.

    Idempotent: deleting a backup that is already deleted removes nothing and says so.
    Audited as ``delete`` (``refused`` with the reasons when refused).
    """
    row = rt.catalog.get(backup_id)
    with audit.audited(rt.catalog, "delete", actor=actor, target=row.target, backup_id=backup_id, detail={"by": "hand"}) as entry:
        reasons = refusals(rt, backup_id, now)
        if reasons:
            entry.detail["reasons"] = reasons
            raise DeleteRefused(f"backup {backup_id} is protected: {'; '.join(reasons)}",
                                "delete an older backup instead, or make a newer backup of "
                                f"'{row.target}' and verify it first; nothing was deleted")
        removed = []
        for loc in row.locations:
            cleanup.remove_copy(rt, row.target, backup_id, loc.tier, loc.key)
            rt.catalog.drop_locations(backup_id, [loc.tier])  # each copy as soon as it is gone
            removed.append({"tier": loc.tier, "key": loc.key})
        if row.status != Status.DELETED:
            rt.catalog.mark_deleted(backup_id)
        # A write of this backup that died (a killed upload) left a temp file, or an S3 multipart
        # upload, that nothing else would remove before cleanup's daily pass.
        debris = []
        cutoff = (now or datetime.now(timezone.utc)) - cleanup.DEBRIS_AGE
        for tier in _tiers_of(rt, row):
            debris += cleanup.partial_writes(rt, tier, f"{row.target}/{backup_id}/", cutoff, dry_run=False)
            debris += cleanup.stale_uploads(rt, tier, f"{row.target}/{backup_id}/", cutoff, dry_run=False)
        entry.detail["tiers"] = [r["tier"] for r in removed]
        entry.detail["debris"] = len(debris)
    return {"backup_id": backup_id, "target": row.target, "status": Status.DELETED.value, "removed": removed,
            "debris": debris}


def _tiers_of(rt: Runtime, row) -> list[str]:
    """The configured tiers the backup may have been written to: its copies' and its target's."""
    names = {loc.tier for loc in row.locations}
    if row.target in rt.config.targets:
        names |= {t.name for t in rt.config.tiers_of(rt.config.targets[row.target])}
    return sorted(n for n in names if n in rt.config.tiers)
