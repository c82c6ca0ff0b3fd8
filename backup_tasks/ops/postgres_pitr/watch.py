"""The watchdog's point-in-time conditions: WAL that stopped arriving, and a gap in the archive.

Both are silent failures: archiving that stopped (a broken archive_command, a dead
shipping task) loses nothing visible until the day a restore to a moment is needed.
"""

from __future__ import annotations

import logging
from datetime import datetime

from backup_tasks.errors import BackupError
from backup_tasks.ops.postgres_pitr import window as pitr
from backup_tasks.ops.runtime import Runtime
from backup_tasks.records import events

log = logging.getLogger(__name__)


def pitr_targets(rt: Runtime) -> list:
    return [t for t in rt.config.targets.values() if t.kind == "postgres" and t.mode == "physical"]


def findings(rt: Runtime, now: datetime, finding) -> list:
    """One lag and one gap condition per physical target; ``finding`` builds the watchdog's Finding."""
    out = []
    for target in pitr_targets(rt):
        try:
            win = pitr.window(rt, target.name, now)
        except BackupError as exc:
            log.warning("watchdog: the window of target %s could not be computed: %s", target.name, exc)
            continue
        limit = target.pitr_rpo_minutes
        if limit is not None:
            lag = win["wal_lag_seconds"]
            late = lag is None or lag > limit * 60
            detail = {"pitr_rpo_minutes": limit, "newest_wal_at": win["newest_wal_at"] or "never"}
            out.append(finding(f"{events.PITR_LAG}:{target.name}", events.PITR_LAG, late, target=target.name, detail=detail,
                               message=(f"target '{target.name}': the newest stored WAL is "
                                        f"{'missing' if lag is None else f'{lag / 60:.1f} min old'}, over its "
                                        f"pitr_rpo_minutes of {limit:g}: archiving or shipping has stopped") if late else
                                       f"target '{target.name}': WAL is arriving again (newest {win['newest_wal_at']})"))
        gaps = win["gaps"]
        out.append(finding(f"{events.PITR_GAP}:{target.name}", events.PITR_GAP, bool(gaps), target=target.name,
                           detail={"gaps": gaps[:5]},
                           message=(f"target '{target.name}': the WAL archive has {len(gaps)} gap(s), the first after "
                                    f"{gaps[0]['after']} ({gaps[0]['missing_segments']} segment(s) missing): times after it "
                                    "cannot be restored until a new base backup") if gaps else
                                   f"target '{target.name}': the WAL archive has no gap again"))
    return out
