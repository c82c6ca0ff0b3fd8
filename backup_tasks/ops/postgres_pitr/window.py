"""The restorable window of a physical PostgreSQL target, gathered from the catalog for policy/pitr.py.

The WAL to walk is chosen the way recovery chooses it: the newest timeline whose
``.history`` file is stored, and along its path each segment number is read from the
timeline that had begun by then (walnames.timeline_for_segment). Segments of
abandoned branches are stored but do not count.
"""

from __future__ import annotations

from datetime import datetime, timezone

from backup_tasks.errors import StorageError, TransientError
from backup_tasks.ops.postgres_pitr import logship
from backup_tasks.ops.runtime import Runtime
from backup_tasks.ops.postgres_pitr.wal import FAMILY, physical_target
from backup_tasks.policy import pitr as policy
from backup_tasks.records.catalog import Status
from backup_tasks.sources.postgres import walnames
from backup_tasks.timefmt import iso, parse


def gather(rt: Runtime, target_name: str) -> tuple[list[policy.BasePoint], list[policy.Piece], dict]:
    target = physical_target(rt, target_name)
    rows = rt.catalog.logs(target.name, FAMILY)
    stored, notes = _stored_keys(rt, target)
    rows = [r for r in rows if any(tier not in stored or r.key in stored[tier] for tier in r.tiers)]
    histories = {r.timeline: (r.detail or {}).get("history", []) for r in rows if r.kind == "history"}
    segments = [r for r in rows if r.kind == "segment"]
    newest = max([*histories, *(r.timeline for r in segments)], default=1)
    history = histories.get(newest, [])
    path = walnames.timeline_path(newest, [(int(t), walnames.parse_lsn(lsn)) for t, lsn in history])
    on_path = {tli for tli, _ in path}
    pieces = [policy.Piece(seq=r.seq, name=r.name, closed_at=r.closed_at) for r in segments
              if r.timeline == walnames.timeline_for_segment(r.seq, path)]
    bases = []
    for row in rt.catalog.list(target=target.name, status=Status.VERIFIED):
        src = (row.manifest or {}).get("source") or {}
        if src.get("mode") != "physical" or src.get("timeline") not in on_path:
            continue
        size = src.get("wal_segment_size", walnames.DEFAULT_SEGMENT_SIZE)
        bases.append(policy.BasePoint(id=row.id, first=walnames.segno_of_lsn(walnames.parse_lsn(src["start_lsn"]), size),
                                      last=walnames.segno_of_lsn(walnames.parse_lsn(src["stop_lsn"]), size),
                                      ready_at=parse(src["end_time"])))
    return bases, pieces, {"timeline": newest, "timeline_path": [t for t, _ in path], "notes": notes}


def _stored_keys(rt: Runtime, target) -> tuple[dict[str, set[str]], list[str]]:
    """The log objects each tier really holds (one listing per tier), so a file deleted behind the catalog's back is a gap.

    A tier that cannot be listed is left out: its recorded files are taken on the
    catalog's word rather than reported as a gap the tier may not have.
    """
    stored, notes = {}, []
    for tier in rt.config.tiers_of(target):
        try:
            stored[tier.name] = {info.key for info in rt.storage(tier).list(logship.log_prefix(target.name, FAMILY) + "/")}
        except (StorageError, TransientError) as exc:
            notes.append(f"tier '{tier.name}' could not be listed ({exc.message}); its WAL is taken as recorded")
    return stored, notes


def window(rt: Runtime, target_name: str, now: datetime | None = None) -> dict:
    """The window as a JSON-able report; ``ok`` is false when a gap breaks it or nothing is restorable."""
    now = now or datetime.now(timezone.utc)
    bases, pieces, extra = gather(rt, target_name)
    win = policy.window(bases, pieces)
    lag = (now - win.newest_piece_at).total_seconds() if win.newest_piece_at else None
    return {
        "target": target_name,
        "earliest": iso(win.earliest),
        "latest": iso(win.latest),
        "spans": [{"from": iso(s.start), "to": iso(s.end), "bases": list(s.base_ids)} for s in win.spans],
        "gaps": [{"after": g.after, "before": g.before, "from": iso(g.since), "to": iso(g.until),
                  "missing_segments": g.missing[1] - g.missing[0] + 1} for g in win.gaps],
        "unrestorable_bases": list(win.unrestorable),
        "segments_stored": len(pieces),
        "newest_wal_at": iso(win.newest_piece_at),
        "wal_lag_seconds": round(lag, 1) if lag is not None else None,
        "ok": bool(win.spans) and not win.gaps,
        **extra,
    }
