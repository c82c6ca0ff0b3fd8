"""Retention as a pure function: which stored copies to keep and which to remove, and why.

    plan = plan_retention(backups, policies, max_age_days, now)

Nothing here reads a clock, a catalog or a tier; ``cleanup.py`` gathers the facts,
calls this, and applies the result. The same input always gives the same plan.

The decision is per copy (one backup on one tier), because tiers keep backups for
different lengths of time (``max_age_days``: local 30, external 30, S3 90 by default):

1. **GFS per target** (borg's prune, restic's forget) over the usable backups
   (``uploaded`` or ``verified``), newest first: ``keep_last`` N; ``keep_daily``,
   ``keep_weekly`` (ISO weeks), ``keep_monthly``, ``keep_yearly``: the newest backup of
   each of the N most recent periods that have one (UTC); ``keep_within`` a duration
   ("7d", "12h", "2w", or a number of days). A target without any rule keeps
   everything by GFS; only the tiers' max ages apply to it.
2. **Max age per tier**: a copy older than its tier's ``max_age_days`` goes even if
   GFS selected the backup, unless it is protected.
3. **Protected, whatever the rules say** (Barman's minimum redundancy): the newest
   verified backup, the newest drill-proven backup, a backup still running, and, by
   closure, every parent of a kept incremental or differential backup.
4. **Object Lock**: a copy whose lock is still in force cannot be deleted, so the plan
   keeps it, says until when, and keeps its parents as for any kept incremental.
5. A **failed** backup that still has stored copies is removed once a newer backup is
   verified; until then it is kept for inspection.

Every decision carries at least one human-readable reason.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Iterable, Mapping

from backup_tasks import timefmt
from backup_tasks.timefmt import parse_duration  # the one reading of a duration; the config loader checks with it too

KEEP, REMOVE = "keep", "remove"
USABLE = ("uploaded", "verified")

#: the period rules in the order they are reported, with their bucket key (UTC)
PERIOD_RULES = (
    ("keep_daily", lambda t: t.strftime("%Y-%m-%d")),
    ("keep_weekly", lambda t: "%04d-W%02d" % t.isocalendar()[:2]),
    ("keep_monthly", lambda t: t.strftime("%Y-%m")),
    ("keep_yearly", lambda t: t.strftime("%Y")),
)


@dataclass(frozen=True)
class Copy:
    """One stored copy of a backup; ``locked_until`` is its Object Lock retain-until, if any."""

    tier: str
    locked_until: datetime | None = None


@dataclass(frozen=True)
class Backup:
    id: str
    target: str
    created_at: datetime
    status: str
    copies: tuple[Copy, ...]
    type: str = "full"
    parent_id: str | None = None
    drill_passed: bool = False


@dataclass(frozen=True)
class Policy:
    keep_last: int = 0
    keep_daily: int = 0
    keep_weekly: int = 0
    keep_monthly: int = 0
    keep_yearly: int = 0
    keep_within: timedelta | None = None

    @classmethod
    def from_config(cls, table: Mapping | None) -> "Policy":
        table = dict(table or {})
        within = table.pop("keep_within", None)
        return cls(keep_within=parse_duration(within) if within not in (None, "", 0) else None,
                   **{k: int(v) for k, v in table.items()})

    @property
    def empty(self) -> bool:
        return not (self.keep_last or self.keep_daily or self.keep_weekly or self.keep_monthly or self.keep_yearly
                    or self.keep_within)

    def describe(self) -> str:
        parts = [f"{name} {getattr(self, name)}" for name in ("keep_last", "keep_daily", "keep_weekly", "keep_monthly",
                                                              "keep_yearly") if getattr(self, name)]
        if self.keep_within:
            parts.append(f"keep_within {_span(self.keep_within)}")
        return ", ".join(parts) or "no rules"


@dataclass(frozen=True)
class Decision:
    backup_id: str
    target: str
    tier: str
    created_at: datetime
    action: str
    reasons: tuple[str, ...]

    def as_dict(self) -> dict:
        return {"backup_id": self.backup_id, "target": self.target, "tier": self.tier,
                "created_at": timefmt.iso(self.created_at), "action": self.action, "reasons": list(self.reasons)}


@dataclass(frozen=True)
class Plan:
    now: datetime
    decisions: tuple[Decision, ...]
    policies: Mapping[str, str] = field(default_factory=dict)

    @property
    def removals(self) -> list[Decision]:
        return [d for d in self.decisions if d.action == REMOVE]

    @property
    def keeps(self) -> list[Decision]:
        return [d for d in self.decisions if d.action == KEEP]

    def removed_entirely(self) -> set[str]:
        """Backups none of whose copies is kept: their catalog entry becomes ``deleted``."""
        kept = {d.backup_id for d in self.keeps}
        return {d.backup_id for d in self.removals if d.backup_id not in kept}

    def as_dict(self) -> dict:
        return {"now": timefmt.iso(self.now), "policies": dict(self.policies),
                "keep": len(self.keeps), "remove": len(self.removals),
                "decisions": [d.as_dict() for d in self.decisions]}


def plan_retention(backups: Iterable[Backup], policies: Mapping[str, Policy], max_age_days: Mapping[str, int],
                   now: datetime) -> Plan:
    """The plan for every target in ``backups``; a target without a policy gets an empty one."""
    by_target: dict[str, list[Backup]] = defaultdict(list)
    for b in backups:
        by_target[b.target].append(b)
    decisions: list[Decision] = []
    described = {}
    for target in sorted(by_target):
        policy = policies.get(target, Policy())
        described[target] = policy.describe()
        decisions += _plan_target(by_target[target], policy, max_age_days, now)
    return Plan(now=now, decisions=tuple(decisions), policies=described)


def _plan_target(backups: list[Backup], policy: Policy, max_age_days: Mapping[str, int], now: datetime) -> list[Decision]:
    live = _live(backups)
    by_id = {b.id: b for b in live}
    gfs = _gfs(live, policy, now)
    protected = protections(live)
    newest_verified = next((b for b in live if b.status == "verified"), None)

    # (backup id, tier) -> [action, reasons]
    table: dict[tuple[str, str], list] = {}
    for b in live:
        for copy in b.copies:
            table[b.id, copy.tier] = _decide(b, copy, gfs.get(b.id), protected.get(b.id), policy, max_age_days, now,
                                            newer_verified=newest_verified is not None and (newest_verified.created_at, newest_verified.id) > (b.created_at, b.id))

    # Object Lock: whatever the rules say, a locked copy cannot go (and so its parents stay too).
    for b in live:
        for copy in b.copies:
            entry = table[b.id, copy.tier]
            if entry[0] == REMOVE and copy.locked_until is not None and copy.locked_until > now:
                table[b.id, copy.tier] = [KEEP, [f"object-locked on tier '{copy.tier}' until {timefmt.iso(copy.locked_until)} "
                                                 f"(would be removed: {'; '.join(entry[1])})"]]

    # Parents of kept incrementals are kept, on the same tier, transitively.
    changed = True
    while changed:
        changed = False
        for b in live:
            if not b.parent_id or b.parent_id not in by_id:
                continue
            parent = by_id[b.parent_id]
            parent_tiers = {c.tier for c in parent.copies}
            for copy in b.copies:
                if table[b.id, copy.tier][0] != KEEP:
                    continue
                tiers = [copy.tier] if copy.tier in parent_tiers else sorted(parent_tiers)
                for tier in tiers:
                    entry = table[parent.id, tier]
                    reason = f"parent of kept {b.type} backup {b.id}"
                    if entry[0] != KEEP:
                        table[parent.id, tier] = [KEEP, [reason]]
                        changed = True
                    elif reason not in entry[1] and not any(r.startswith("parent of kept") for r in entry[1]):
                        entry[1].append(reason)

    return [Decision(backup_id=b.id, target=b.target, tier=c.tier, created_at=b.created_at,
                     action=table[b.id, c.tier][0], reasons=tuple(table[b.id, c.tier][1]))
            for b in live for c in b.copies]


def _live(backups: Iterable[Backup]) -> list[Backup]:
    """A target's backups that still have copies, newest first."""
    return sorted((b for b in backups if b.status != "deleted" and b.copies), key=lambda b: (b.created_at, b.id), reverse=True)


def protections(backups: Iterable[Backup]) -> dict[str, list[str]]:
    """Backup id -> why it must stay whatever the rules say, for one target's backups (rule 3).

    The newest verified, the newest drill-proven, and runs in progress. Parents of kept
    incrementals are added by the plan, which knows what it keeps; deleting one backup by
    hand (ops/delete.py) treats every remaining child as kept.
    """
    live = _live(backups)
    protected: dict[str, list[str]] = defaultdict(list)
    newest_verified = next((b for b in live if b.status == "verified"), None)
    if newest_verified:
        protected[newest_verified.id].append("newest verified backup")
    newest_drilled = next((b for b in live if b.drill_passed and b.status != "failed"), None)
    if newest_drilled:
        protected[newest_drilled.id].append("newest drill-proven backup")
    for b in live:
        if b.status == "running":
            protected[b.id].append("still running")
    return protected


def _gfs(live: list[Backup], policy: Policy, now: datetime) -> dict[str, list[str]]:
    """Backup id -> the GFS rules that select it (newest first input)."""
    usable = [b for b in live if b.status in USABLE]
    reasons: dict[str, list[str]] = defaultdict(list)
    if policy.empty:
        for b in usable:
            reasons[b.id].append("no GFS rules for this target: kept until its tier's max_age_days")
        return reasons
    for rank, b in enumerate(usable[: policy.keep_last], start=1):
        reasons[b.id].append(f"keep_last {policy.keep_last} (#{rank})")
    for rule, bucket_of in PERIOD_RULES:
        limit = getattr(policy, rule)
        if not limit:
            continue
        seen: set[str] = set()
        for b in usable:
            bucket = bucket_of(b.created_at)
            if bucket in seen:
                continue
            seen.add(bucket)
            reasons[b.id].append(f"{rule} {limit} ({bucket})")
            if len(seen) == limit:
                break
    if policy.keep_within:
        for b in usable:
            if b.created_at >= now - policy.keep_within:
                reasons[b.id].append(f"keep_within {_span(policy.keep_within)}")
    return reasons


def _decide(b: Backup, copy: Copy, gfs: list[str] | None, protected: list[str] | None, policy: Policy,
            max_age_days: Mapping[str, int], now: datetime, *, newer_verified: bool) -> list:
    max_age = max_age_days.get(copy.tier)
    expired = max_age is not None and b.created_at < now - timedelta(days=max_age)
    age_reason = f"older than tier '{copy.tier}' max_age_days {max_age}"
    if protected:
        return [KEEP, list(protected) + list(gfs or ()) + ([f"kept although {age_reason}"] if expired else [])]
    if b.status == "failed":
        if newer_verified:
            return [REMOVE, ["failed backup, and a newer backup is verified"]]
        return [KEEP, ["failed backup kept for inspection until a newer backup is verified"]]
    if gfs:
        if expired:
            return [REMOVE, [age_reason + f" (GFS alone would keep it: {'; '.join(gfs)})"]]
        return [KEEP, list(gfs)]
    return [REMOVE, [f"not selected by the target's policy ({policy.describe()})"]]


def _span(delta: timedelta) -> str:
    if delta % timedelta(days=1) == timedelta(0):
        return f"{delta.days}d"
    return f"{int(delta.total_seconds() // 3600)}h" if delta % timedelta(hours=1) == timedelta(0) else str(delta)
