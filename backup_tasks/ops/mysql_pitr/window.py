"""Gathering what the binlog window policy decides on: the target's dumps with coordinates and its shipped logs."""

from __future__ import annotations

from datetime import datetime, timezone

from backup_tasks.ops.mysql_pitr.ship import binlog_target
from backup_tasks.ops.runtime import Runtime
from backup_tasks.policy import binlog_window
from backup_tasks.records.catalog import Status
from backup_tasks.timefmt import parse


def bases(rt: Runtime, target: str, statuses: tuple[str, ...] = (Status.VERIFIED,)) -> list[binlog_window.Base]:
    """Dumps of ``target`` (verified ones, unless told) that recorded where the binary log stood at their snapshot."""
    out = []
    for row in rt.catalog.list(target=target):
        if row.status not in statuses:
            continue
        coords = ((row.manifest or {}).get("source") or {}).get("binlog") or {}
        if coords.get("file") and coords.get("position") is not None and coords.get("at"):
            out.append(binlog_window.Base(row.id, parse(coords["at"]), coords["file"], int(coords["position"])))
    return out


def shipped(rt: Runtime, target: str) -> list[binlog_window.Shipped]:
    return [binlog_window.Shipped(r.name, r.seq, r.first_event_at, r.last_event_at) for r in rt.catalog.binlogs(target)]


def window(rt: Runtime, target_name: str, now: datetime | None = None) -> dict:
    """The restorable window of a binlog target, as ``backupctl pitr`` shows it."""
    target = binlog_target(rt, target_name)
    now = now or datetime.now(timezone.utc)
    found = binlog_window.window(bases(rt, target.name), shipped(rt, target.name))
    rows = rt.catalog.binlogs(target.name)
    return {"target": target.name, "kind": "mysql", "pitr_rpo_minutes": target.pitr_rpo_minutes,
            "bases": len(found.intervals), "binlogs": len(rows), "newest_binlog": rows[-1].name if rows else None,
            **found.as_dict(now)}
