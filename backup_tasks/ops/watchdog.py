"""The watchdog: find what did *not* happen, and say so once.

Run every 15 minutes by beat (``backup.watchdog`` on the ``maintenance`` queue; in the
embedded default, from cron with ``backupctl watchdog``). It looks for:

- an **RPO breach**: a target whose newest verified backup was taken longer ago than
  its ``rpo_hours`` (or that never had one) — the silent failure of a backup that
  quietly stopped running;
- **low free space** on a local or external tier (``alert_min_free_percent``,
  ``alert_min_free_bytes``, or the tier's own ``min_free_bytes``);
- a **missing external mount**;
- for point-in-time targets, **WAL that stopped arriving** (newest stored segment older
  than ``pitr_rpo_minutes``) and a **gap** in the WAL archive (postgres_pitr/watch.py).
- **binlog lag**: a ``binlog = true`` target whose newest shipped binary log is older
  than its ``pitr_rpo_minutes`` (shipping stopped, or the server cannot be reached).
- a run whose **worker died** mid-stage unseen (abandoned.py): failed, freed and reported;
- a **key due for rotation**: a current encryption key in use for longer than
  ``key_max_age_days`` (keys/ages.py says from when a key counts as current); it resolves
  once the key has been rotated out of the recipients.

Each finding is a *condition* kept in the catalog: it is alerted once when it opens
(an event, which alerting sends on) and once more, as "resolved", when it clears (for
an RPO breach: when a fresh verified backup exists). Opening and closing are atomic in
the catalog, so two watchdogs running at once still alert once. An opening alert that
reached no channel (every channel down) leaves the condition un-notified, and each
later run sends it again, with the current wording, until one channel takes it; the
event itself is recorded once.

Free space and mounts are checked as this host sees them: run the watchdog on a host
that mounts the tiers (or one watchdog per storage host).
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass, field
from datetime import datetime, timezone

from backup_tasks import defaults
from backup_tasks.records import events
from backup_tasks.ops import abandoned, readiness
from backup_tasks.ops.keys import ages as key_age
from backup_tasks.ops.postgres_pitr import watch as pitr_watch
from backup_tasks.policy.readiness import TargetState
from backup_tasks.timefmt import iso
from backup_tasks.storage.capabilities import DiskSpace, DiskUsage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Finding:
    """One condition as of now: ``active`` says whether it holds; the rest words the alert."""

    key: str
    kind: str
    active: bool
    message: str
    target: str | None = None
    tier: str | None = None
    backup_id: str | None = None
    detail: dict = field(default_factory=dict)


def rpo_finding(state: TargetState) -> Finding:
    """Pure: the RPO condition of one target."""
    key = f"{events.RPO_BREACH}:{state.target}"
    last_ok = state.last_verified
    last_run = state.last_run
    detail = {"rpo_hours": state.rpo_hours, "last_verified_at": iso(last_ok.created_at) if last_ok else "never"}
    if last_run is not None:
        detail["last_run"] = f"{last_run.id} ({last_run.status}{': ' + last_run.error if last_run.error else ''})"
    if state.rpo_compliant:
        return Finding(key, events.RPO_BREACH, False, target=state.target, backup_id=last_ok.id, detail=detail,
                       message=f"target '{state.target}' has a verified backup within its RPO of {state.rpo_hours:g} h again: "
                               f"{last_ok.id}, taken {iso(last_ok.created_at)}")
    if last_ok is None:
        what = "has never had a verified backup"
    else:
        what = (f"has no verified backup within its RPO of {state.rpo_hours:g} h: the newest one was taken "
                f"{iso(last_ok.created_at)}, {state.data_age_seconds / 3600:.1f} h ago")
    return Finding(key, events.RPO_BREACH, True, target=state.target, backup_id=last_run.id if last_run else None,
                   detail=detail, message=f"target '{state.target}' {what}")


def tier_findings(tier, *, mounted: bool | None, usage: DiskUsage | None, settings, low_open: bool = False) -> list[Finding]:
    """Pure: the mount and free-space conditions of one local or external tier.

    ``mounted`` is None for a local tier (no mount expected). When an external tier is not
    mounted, its free space is that of the disk underneath and says nothing: the space
    condition is then left as it is (not part of the result).

    Low space opens below a threshold but, once open (``low_open``), clears only above it
    plus a margin (``defaults.LOW_SPACE_RESOLVE_MARGIN_PERCENT``): free space that hovers
    around the threshold does not alert and resolve at every check.
    """
    path = str(tier.path)
    out = []
    if mounted is not None:
        out.append(Finding(f"{events.MOUNT_MISSING}:{tier.name}", events.MOUNT_MISSING, not mounted, tier=tier.name,
                           detail={"tier": tier.name, "path": path},
                           message=(f"external tier '{tier.name}': {path} is not a mount point, so the disk or share is "
                                    "not there; backups to it are refused until it is mounted") if not mounted else
                                   f"external tier '{tier.name}' is mounted at {path} again"))
        if not mounted:
            return out
    if usage is None:
        return out
    min_bytes = max(settings.alert_min_free_bytes, int(tier.options.get("min_free_bytes") or 0))
    percent = usage.free * 100 / usage.total if usage.total else 100.0
    below = usage.free < min_bytes or percent < settings.alert_min_free_percent
    margin = defaults.LOW_SPACE_RESOLVE_MARGIN_PERCENT
    # Once open, still low until clear of the thresholds (those that are set) by the margin.
    low = below or (low_open and (usage.free < min_bytes * (100 + margin) / 100 or (
        settings.alert_min_free_percent > 0 and percent < settings.alert_min_free_percent + margin)))
    limits = [f"{settings.alert_min_free_percent}%"] + ([f"{min_bytes:,} bytes"] if min_bytes else [])
    where = "below the alert threshold" if below else f"not yet {margin}% clear of the alert threshold"
    out.append(Finding(f"{events.LOW_SPACE}:{tier.name}", events.LOW_SPACE, low, tier=tier.name,
                       detail={"tier": tier.name, "path": path, "free_bytes": usage.free, "free_percent": round(percent, 1)},
                       message=(f"tier '{tier.name}' at {path} has {usage.free:,} bytes free ({percent:.1f}%), "
                                f"{where} ({' / '.join(limits)})") if low else
                               f"tier '{tier.name}' at {path} has {usage.free:,} bytes free ({percent:.1f}%) again"))
    return out


def binlog_lag_finding(target, newest: datetime | None, newest_name: str | None, now: datetime) -> Finding:
    """Pure: a binlog target whose newest shipped binary log is older than its ``pitr_rpo_minutes``."""
    from backup_tasks.policy.binlog_window import lag_breached, lag_seconds

    key = f"{events.BINLOG_LAG}:{target.name}"
    lag = lag_seconds(newest, now)
    detail = {"pitr_rpo_minutes": target.pitr_rpo_minutes, "newest_binlog": newest_name,
              "newest_event_at": iso(newest) if newest else "never", "lag_seconds": None if lag is None else round(lag)}
    if not lag_breached(newest, now, target.pitr_rpo_minutes):
        return Finding(key, events.BINLOG_LAG, False, target=target.name, detail=detail,
                       message=f"target '{target.name}' ships binary logs again: the newest ({newest_name}) reaches {iso(newest)}")
    what = ("has never shipped a binary log" if newest is None else
            f"has shipped no binary log for {lag / 60:.0f} min (newest {newest_name}, up to {iso(newest)})")
    return Finding(key, events.BINLOG_LAG, True, target=target.name, detail=detail,
                   message=f"target '{target.name}' {what}, above its pitr_rpo_minutes of {target.pitr_rpo_minutes:g}: "
                           "point-in-time restores cannot reach the last minutes (is backup.binlog_ship running on its host?)")


def findings(rt, now: datetime, open_keys: set[str]) -> list[Finding]:
    """Every condition as of now; ``open_keys``: the conditions open in the catalog (for low space's margin)."""
    out = [rpo_finding(state) for state in readiness.assess(rt, now)]
    out += pitr_watch.findings(rt, now, Finding)
    for target in rt.config.targets.values():
        if target.binlog:
            rows = rt.catalog.binlogs(target.name)
            newest = max(rows, key=lambda r: r.last_event_at, default=None)
            out.append(binlog_lag_finding(target, newest.last_event_at if newest else None, newest.name if newest else None, now))
    out += key_age.findings(rt, now, open_keys, Finding)
    for tier in rt.config.tiers.values():
        storage = rt.storage(tier)
        if not isinstance(storage, DiskSpace):
            continue  # object storage: no disk of ours to fill or to lose
        disk = storage.disk_state()
        if disk.usage is None and disk.mounted is not False:
            log.warning("watchdog: cannot read the free space of tier '%s' at %s; its low-space check is skipped", tier.name, tier.path)
        out += tier_findings(tier, mounted=disk.mounted, usage=disk.usage, settings=rt.settings,
                             low_open=f"{events.LOW_SPACE}:{tier.name}" in open_keys)
    return out


def run_watchdog(rt, now: datetime | None = None, *, release_lock: abandoned.ReleaseLock | None = None,
                 has_message: abandoned.HasMessage | None = None) -> dict:
    """Check everything, open or close conditions, emit one event per change; returns what changed.

    First it fails the runs whose worker died unseen (abandoned.reap; each is a
    ``run.abandoned`` event, and ``abandoned`` in the result), so their targets are free
    and their time counts against the RPO like any failure. ``release_lock(target, run)``
    frees a reaped run's lock (the caller knows the lock; without it the next start takes it over);
    ``has_message(target, run)`` asks the broker for a waiting run's message (without it only dead stages are found).
    """
    now = now or datetime.now(timezone.utc)
    host = socket.gethostname()
    reaped = abandoned.reap(rt, now, release_lock=release_lock, has_message=has_message)
    opened, resolved, still_open = [], [], []
    open_rows = rt.catalog.open_conditions()
    current = findings(rt, now, {row.key for row in open_rows})
    unnotified = {row.key for row in open_rows if not row.notified}
    for f in current:
        detail = {**f.detail, "checked_on": host}
        if f.active:
            severity = "warning" if f.kind in (events.LOW_SPACE, events.KEY_MAX_AGE) else "error"
            if rt.catalog.open_condition(f.key, kind=f.kind, target=f.target, tier=f.tier, detail=detail, now=now):
                delivery = events.emit(rt.catalog, f.kind, f.message, severity=severity, target=f.target,
                                       host=_host(rt, f, host), backup_id=f.backup_id, **detail)
                opened.append(f.key)
            else:
                still_open.append(f.key)
                if f.key not in unnotified:
                    continue
                delivery = events.emit(rt.catalog, f.kind, f.message, severity=severity, target=f.target,
                                       host=_host(rt, f, host), backup_id=f.backup_id, record=False, **detail)
            if delivery is not None and delivery.sent:
                rt.catalog.mark_notified(f.key)
        elif rt.catalog.close_condition(f.key) is not None:
            events.emit(rt.catalog, f.kind + events.RESOLVED, f.message, severity="info", target=f.target,
                        host=_host(rt, f, host), backup_id=f.backup_id, **detail)
            resolved.append(f.key)
    # Conditions of targets or tiers that left the config are closed quietly (any opened above is known).
    known = {f.key for f in current}
    for row in open_rows:
        if row.key not in known and (row.target not in rt.config.targets if row.target else row.tier not in rt.config.tiers):
            rt.catalog.close_condition(row.key)
    result = {"checked_at": iso(now), "host": host, "opened": opened, "resolved": resolved, "open": still_open + opened,
              "abandoned": reaped}
    log.info("watchdog: %s", result)
    return result


def _host(rt, finding: Finding, here: str) -> str:
    """A target's condition is about its host; a tier's about the host that looked at it."""
    if finding.target and finding.target in rt.config.targets:
        return rt.config.targets[finding.target].host
    return here
