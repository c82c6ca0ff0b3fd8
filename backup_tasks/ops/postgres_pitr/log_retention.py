"""Retention of archived WAL: it follows the base backups that retention keeps.

A segment older than the oldest kept base backup's start serves no restore and is
removed, from every tier and then from the catalog (in that order, so an interrupted
cleanup leaves a recorded object the next run removes, never an unrecorded one).
Timeline history files are kept: they are tiny and recovery reads them to find its way.
"""

from __future__ import annotations

import logging

from backup_tasks.errors import BackupError, ObjectNotFound
from backup_tasks.ops.postgres_pitr import window as pitr
from backup_tasks.ops.runtime import Runtime
from backup_tasks.ops.postgres_pitr.wal import FAMILY
from backup_tasks.policy import pitr as policy
from backup_tasks.records import log_markers
from backup_tasks.records.catalog import Status
from backup_tasks.sources.postgres import walnames

log = logging.getLogger(__name__)


def prune(rt: Runtime, target, *, removed_backups: set[str], dry_run: bool) -> list[dict]:
    """Remove (or, dry, list) the WAL no kept base backup of ``target`` needs; one entry per file with its reason."""
    bases, _pieces, _extra = pitr.gather(rt, target.name)
    kept_ids = {r.id for r in rt.catalog.list(target=target.name) if r.status in (Status.VERIFIED, Status.UPLOADED)}
    kept = [b for b in bases if b.id in kept_ids and b.id not in removed_backups]
    rows = [r for r in rt.catalog.logs(target.name, FAMILY) if r.kind in ("segment", "partial", "backup")]
    names, oldest = policy.logs_to_remove([(r.name, r.seq) for r in rows], kept)
    if oldest is None:
        return []
    start = walnames.segment_name(1, oldest.first).removeprefix("00000001")
    reason = f"WAL older than the oldest kept base backup {oldest.id} (which starts at segment …{start})"
    out = []
    by_name = {r.name: r for r in rows}
    for name in names:
        row = by_name[name]
        entry = {"name": name, "key": row.key, "tiers": list(row.tiers), "reason": reason}
        if not dry_run:
            try:
                for tier in row.tiers:
                    for key in (row.key, log_markers.key_of(row.key)):
                        try:
                            rt.storage(tier).delete(key)
                        except ObjectNotFound:
                            pass
                rt.catalog.forget_log(target.name, FAMILY, name)
            except BackupError as exc:
                entry["error"] = exc.message
                log.warning("cleanup: WAL %s of %s not removed: %s", name, target.name, exc)
        out.append(entry)
    return out
