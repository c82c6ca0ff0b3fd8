"""Read the catalog once for every target's readiness: the gathering half of ``policy.readiness``.

One moment, one set of catalog queries, one ``TargetState`` per target: the metrics
exporter, the DR report and the watchdog all judge from the same reading.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from backup_tasks.policy.readiness import TargetState, success_rate
from backup_tasks.records.catalog import Status


def assess(rt, now: datetime | None = None, *, days: int | None = None, targets=None) -> list[TargetState]:
    """The state of every configured target (or of ``targets``), read at one moment."""
    now = now or datetime.now(timezone.utc)
    days = days or rt.settings.report_days
    catalog = rt.catalog
    counts = catalog.status_counts()
    storage = catalog.storage_by_tier()
    since = now - timedelta(days=days)
    recent: dict[str, list] = {}
    for row in catalog.runs_since(since):
        recent.setdefault(row.target, []).append(row)
    states = []
    for target in rt.config.targets.values():
        if targets is not None and target.name not in targets:
            continue
        drills = [d for d in catalog.drills(target.name) if d.result != "running"]
        ok, attempts = success_rate(recent.get(target.name, []), since)
        states.append(TargetState(
            target=target.name, kind=target.kind, host=target.host, rpo_hours=target.rpo_hours, now=now,
            drill_configured=bool(target.drill),
            last_run=catalog.newest(target.name),
            last_stored=catalog.newest(target.name, [Status.UPLOADED, Status.VERIFIED]),
            last_verified=catalog.newest(target.name, [Status.VERIFIED]),
            last_drill=drills[0] if drills else None,
            runs_by_status={st: n for (t, st), n in counts.items() if t == target.name},
            storage_by_tier={tier: n for (t, tier), n in storage.items() if t == target.name},
            successes=ok, attempts=attempts, window_days=days,
        ))
    return states
