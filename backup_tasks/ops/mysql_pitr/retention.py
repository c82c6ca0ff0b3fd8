"""Retention of shipped binary logs: those no kept dump can replay go, nothing inside the window does.

Run by cleanup after the backups' own retention, with the backups it removed: a log is
removable once it is numbered below the binlog coordinates of the oldest dump that is
kept (``policy.binlog_window.prunable``). Removal order per log, as for backups: the
object, then its signed record, then the catalog row, each step idempotent, so an
interrupted cleanup is finished by the next.
"""

from __future__ import annotations

from backup_tasks.errors import BackupError, ObjectNotFound
from backup_tasks.ops.mysql_pitr import window as gather
from backup_tasks.ops.runtime import Runtime
from backup_tasks.policy import binlog_window
from backup_tasks.records.catalog import Status


def prune(rt: Runtime, targets, removed: set[str], *, dry_run: bool, report: dict) -> list[dict]:
    """Remove (or, dry, list) each binlog target's logs older than its oldest kept dump; errors go to ``report``."""
    out = []
    for target in targets:
        if not target.binlog:
            continue
        kept = [b for b in gather.bases(rt, target.name, (Status.VERIFIED, Status.UPLOADED)) if b.backup_id not in removed]
        rows = {r.name: r for r in rt.catalog.binlogs(target.name)}
        oldest = min(kept, key=lambda b: binlog_window.seq_of(b.file)[1], default=None)
        for name in binlog_window.prunable(gather.shipped(rt, target.name), kept):
            row = rows[name]
            entry = {"target": target.name, "binlog": name, "tiers": row.detail.get("tiers", []),
                     "reason": f"older than {oldest.file}, where the oldest kept dump ({oldest.backup_id}) starts replaying"}
            if not dry_run:
                try:
                    for tier in entry["tiers"]:
                        storage = rt.storage(tier)
                        for key in (row.key, row.key + ".json"):
                            try:
                                storage.delete(key)
                            except ObjectNotFound:
                                pass
                except BackupError as exc:
                    report["errors"].append({"target": target.name, "binlog": name, "type": type(exc).__name__,
                                             "message": exc.message, "remedy": exc.remedy, "during": "binlogs"})
                    continue
                rt.catalog.delete_binlog(target.name, name)
            out.append(entry)
    return out
