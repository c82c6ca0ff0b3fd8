"""Are we recoverable right now? The rules, one answer per target.

The metrics exporter, the DR report and the RPO watchdog all ask the same questions
(newest verified backup, its age against the RPO, the last drill and its measured RTO,
success rate, storage per tier), so they share one ``TargetState`` per target, filled
from the catalog by ``ops/readiness.py``. The rules here are pure functions of plain
values and an injected clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

#: run statuses as the catalog records them (its ``Status`` is a str enum, equal to these values)
FAILED, DELETED, UPLOADED = "failed", "deleted", "uploaded"


def rpo_compliant(newest_verified_at: datetime | None, rpo_hours: float, now: datetime) -> bool:
    """True when the newest verified backup's data is no older than the RPO.

    The age counts from when the backup was *taken* (its creation time), not from when
    it was verified: the RPO is about how much data a restore would lose.
    """
    return newest_verified_at is not None and now - newest_verified_at <= timedelta(hours=rpo_hours)


def success_rate(runs, since: datetime) -> tuple[int, int]:
    """(successes, attempts) among runs created since ``since`` that have an outcome; success = it was verified.

    An outcome: verified (also when retention removed it later), failed, deleted without
    ever being verified (retention removes failed runs), or stored but given up on by its
    verify (uploaded, with the reason noted). A run still running, or stored and awaiting
    its verify, has no outcome yet and is not counted either way.
    """
    done = [r for r in runs if r.created_at >= since and _has_outcome(r)]
    return sum(1 for r in done if r.verified_at is not None), len(done)


def _has_outcome(run) -> bool:
    if run.verified_at is not None or run.status in (FAILED, DELETED):
        return True
    return run.status == UPLOADED and bool(run.error)  # verify did not finish (verify.incomplete)


@dataclass
class TargetState:
    """What the catalog says about one target at ``now``; times are aware UTC datetimes."""

    target: str
    kind: str
    host: str
    rpo_hours: float
    now: datetime
    drill_configured: bool = False
    last_run: object | None = None  # BackupRow: the newest run, whatever its status
    last_stored: object | None = None  # newest run that reached storage (uploaded or verified)
    last_verified: object | None = None  # newest run in status verified
    last_drill: object | None = None  # DrillRow: the newest finished drill
    runs_by_status: dict[str, int] = field(default_factory=dict)
    storage_by_tier: dict[str, int] = field(default_factory=dict)
    successes: int = 0
    attempts: int = 0
    window_days: int = 30

    @property
    def rpo_compliant(self) -> bool:
        return rpo_compliant(self.last_verified.created_at if self.last_verified else None, self.rpo_hours, self.now)

    @property
    def data_age_seconds(self) -> float | None:
        """Age of the newest verified backup's data, the quantity the RPO bounds."""
        return (self.now - self.last_verified.created_at).total_seconds() if self.last_verified else None

    @property
    def success_rate(self) -> float | None:
        return self.successes / self.attempts if self.attempts else None

    @property
    def problems(self) -> list[str]:
        """Why this target is not ready (empty: ready)."""
        out = []
        if not self.last_verified:
            out.append("never had a verified backup")
        elif not self.rpo_compliant:
            out.append(f"newest verified backup is {self.data_age_seconds / 3600:.1f} h old (RPO {self.rpo_hours:g} h)")
        if self.last_drill is not None and self.last_drill.result != "passed":
            out.append("last restore drill failed")
        elif self.drill_configured and self.last_drill is None:
            out.append("never drilled")
        return out

    @property
    def ready(self) -> bool:
        return not self.problems
