"""What an alert says: turn a catalog event into a message a tired operator can act on.

Every alert names the target (or, for a tier, the targets that use it), the host and the
run id, says what happened, and ends with the next step as a command to type. The text
is built from the event alone (plus the targets file for the tier → targets mapping), so
the watchdog, a worker and the CLI all word the same event the same way. Secrets are
masked afterwards by ``redact.Redactor`` on the way out.
"""

from __future__ import annotations

import hashlib
import re
import socket
from dataclasses import dataclass, field
from datetime import datetime, timezone

from backup_tasks.records import events

#: apprise notification types, by our severity
LEVELS = ("failure", "warning", "success", "info")


@dataclass(frozen=True)
class Alert:
    kind: str
    level: str  # one of LEVELS
    title: str
    what: str
    next_step: str
    target: str | None = None
    host: str | None = None
    backup_id: str | None = None
    remedy: str = ""
    at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    #: further (label, value) lines: tier, path, affected targets ...
    facts: tuple[tuple[str, str], ...] = ()
    #: alerts with the same key within the repeat window are counted, not sent
    dedupe_key: str = ""

    @property
    def subject(self) -> str:
        tag = {"failure": "FAILED", "warning": "WARNING", "success": "OK", "info": "INFO"}[self.level]
        return f"[backup-tasks] {tag}: {self.title}"

    def body(self, *, suppressed: int = 0, since: datetime | None = None) -> str:
        lines = [self.what, ""]
        lines.append(f"Target:    {self.target or '-'}")
        lines.append(f"Host:      {self.host or '-'}")
        lines.append(f"Run:       {self.backup_id or '-'}")
        lines.append(f"When:      {_iso(self.at)}")
        lines += [f"{label + ':':<10} {value}" for label, value in self.facts]
        if self.remedy:
            lines.append(f"Remedy:    {self.remedy}")
        steps = self.next_step.split("\n")
        lines.append(f"Next step: {steps[0]}")
        lines += [f"           {s}" for s in steps[1:]]
        if suppressed:
            lines += ["", f"({suppressed} identical alert{'s' if suppressed != 1 else ''} suppressed"
                          f"{' since ' + _iso(since) if since else ''})"]
        lines += ["", f"-- backup-tasks on {socket.gethostname()}, event {self.kind}"]
        return "\n".join(lines)


@dataclass(frozen=True)
class _Wording:
    level: str
    title: str
    next_step: str


#: how each event kind is worded; {target} {host} {id} {tier} {path} {rpo} are filled from the event
WORDING: dict[str, _Wording] = {
    events.CHAIN_FAILED: _Wording(
        "failure", "backup of '{target}' failed on {host}",
        "backupctl show {id}   (the reason and the failed stage)\nafter fixing the cause: backupctl backup {target} --wait"),
    events.RUN_ABANDONED: _Wording(
        "failure", "backup of '{target}' was abandoned on {host}: its worker died mid-stage, or the broker lost its next stage",
        "backupctl show {id}   (which of the two, and its remedy)\nafter fixing the cause: backupctl backup {target} --wait"),
    events.VERIFY_FAILED: _Wording(
        "failure", "verification of a backup of '{target}' failed",
        "do not rely on this backup: backupctl show {id}\nthen take a new one: backupctl backup {target} --wait"),
    events.VERIFY_INCOMPLETE: _Wording(
        "warning", "backup of '{target}' is stored but could not be verified",
        "backupctl verify {id}"),
    events.DRILL_FAILED: _Wording(
        "failure", "restore drill of '{target}' failed",
        "backupctl drill {target} --history   (the failed step)\nafter fixing it: backupctl drill {target}"),
    events.UPLOAD_TIER_FAILED: _Wording(
        "failure", "upload of '{target}' to tier '{tier}' failed",
        "check tier '{tier}', then: backupctl backup {target} --wait"),
    events.TIER_REFUSED: _Wording(
        "failure", "tier '{tier}' refused to write",
        "fix tier '{tier}' (see Remedy), then: backupctl backup {target} --wait"),
    events.CLEANUP_FAILED: _Wording(
        "warning", "cleanup of '{target}' could not remove a copy on tier '{tier}'",
        "backupctl cleanup --target {target} --dry-run"),
    events.RPO_BREACH: _Wording(
        "failure", "RPO breach: '{target}' has no verified backup within {rpo} h",
        "backupctl list --target {target}   (what ran and why it failed)\nthen: backupctl backup {target} --wait"),
    events.RPO_BREACH + events.RESOLVED: _Wording(
        "success", "resolved: '{target}' has a verified backup within its RPO again",
        "nothing to do"),
    events.SIZE_ANOMALY: _Wording(
        "warning", "size anomaly: backup of '{target}' is {percent}% of its usual size",
        "backupctl show {id}   (is the source complete? a truncated dump, a dropped table, a missing mount?)\n"
        "if the change is expected, nothing to do: the median follows within a week"),
    events.LOW_SPACE: _Wording(
        "warning", "low free space on tier '{tier}'",
        "free space on {path}, or remove old backups: backupctl cleanup --dry-run, then backupctl cleanup"),
    events.LOW_SPACE + events.RESOLVED: _Wording(
        "success", "resolved: tier '{tier}' has enough free space again", "nothing to do"),
    events.MOUNT_MISSING: _Wording(
        "failure", "external tier '{tier}' is not mounted at {path}",
        "mount it (e.g. mount {path}; check /etc/fstab and the device), then: backupctl backup {target} --wait"),
    events.MOUNT_MISSING + events.RESOLVED: _Wording(
        "success", "resolved: external tier '{tier}' is mounted again", "nothing to do"),
    events.LOG_CONFLICT: _Wording(
        "failure", "WAL archiving of '{target}' stopped: a file was offered again with other contents",
        "find the second server archiving into '{target}' and stop it; the archive keeps the first copy"),
    events.SPOOL_FULL: _Wording(
        "failure", "the WAL spool of '{target}' on {host} is over its limit",
        "check the shipping task (backupctl wal ship --target {target}) and the tiers; nothing has been dropped"),
    events.PITR_LAG: _Wording(
        "failure", "no recent WAL stored for '{target}'",
        "check archive_command in PostgreSQL's log (pg_stat_archiver) and the shipping task; backupctl pitr {target}"),
    events.PITR_LAG + events.RESOLVED: _Wording(
        "success", "resolved: WAL of '{target}' is arriving again", "nothing to do"),
    events.PITR_GAP: _Wording(
        "failure", "gap in the WAL archive of '{target}'",
        "backupctl pitr {target}   (where the gap is)\nthen take a new base backup: backupctl backup {target} --wait"),
    events.PITR_GAP + events.RESOLVED: _Wording(
        "success", "resolved: the WAL archive of '{target}' has no gap", "nothing to do"),
    events.BINLOG_LAG: _Wording(
        "failure", "binlog shipping of '{target}' lags behind its pitr_rpo_minutes",
        "backupctl pitr {target} --ship   (on the target's host: ships now, or says why not)\n"
        "then check the backup.binlog_ship worker on {host}"),
    events.BINLOG_LAG + events.RESOLVED: _Wording(
        "success", "resolved: binlog shipping of '{target}' is within its pitr_rpo_minutes again", "nothing to do"),
    events.BINLOG_GAP: _Wording(
        "failure", "binary logs of '{target}' were purged before they were shipped",
        "backupctl backup {target} --wait   (a new dump starts a new restorable window)\nbackupctl pitr {target}"),
    events.BINLOG_CONFLICT: _Wording(
        "failure", "a binary log of '{target}' differs from the stored one of the same name",
        "backupctl backup {target} --wait   (see Remedy: the server's log numbering was reset)"),
    events.KEY_MAX_AGE: _Wording(
        "warning", "encryption key {key_id} is due for rotation",
        "backupctl keys rotate --out NEW-KEY-DIR   (then make the printed change)\nthen: backupctl reencrypt --wait"),
    events.KEY_MAX_AGE + events.RESOLVED: _Wording(
        "success", "resolved: encryption key {key_id} is no longer due for rotation", "nothing to do"),
    events.VERIFIED: _Wording(
        "success", "backup of '{target}' verified",
        "nothing to do; restore with: backupctl restore {id} --to PATH"),
}


def from_event(*, kind: str, severity: str, message: str, target: str | None, host: str | None, backup_id: str | None,
               detail: dict | None, at: datetime | None = None, config=None) -> Alert:
    """The alert for one event (any kind: unknown kinds get a generic wording)."""
    detail = dict(detail or {})
    tier = detail.get("tier")
    # A tier's trouble is every target's that stores there, even when one run ran into it.
    if tier and (not target or kind == events.TIER_REFUSED) and config is not None:
        users = [t.name for t in config.targets.values() if tier in t.storage]
        detail.setdefault("affected_targets", users)
    wording = WORDING.get(kind) or _Wording(_level(severity), kind, "backupctl report")
    if kind == events.TIER_REFUSED and detail.get("reason") == "not-mounted":
        wording = WORDING[events.MOUNT_MISSING]
    next_step = wording.next_step
    if not target:  # a tier's alert: re-run the targets that use it, never a placeholder to fill in
        again = "; ".join(f"backupctl backup {t} --wait" for t in detail.get("affected_targets") or ())
        next_step = next_step.replace(", then: backupctl backup {target} --wait",
                                      f", then: {again}" if again else "; the next scheduled backups then reach it")
    # No host on the event (a tier refused a write): it happened here, in the process that alerts.
    host = host or detail.get("checked_on") or socket.gethostname()
    values = _Values(target=target or "TARGET", host=host, id=backup_id or "ID",
                     tier=tier or "-", path=detail.get("path", "-"), rpo=_number(detail.get("rpo_hours")),
                     percent=detail.get("percent", "?"), key_id=detail.get("key_id", "?"))
    facts: list[tuple[str, str]] = []
    for key, label in (("tier", "Tier"), ("path", "Path"), ("stage", "Stage"), ("check", "Check"), ("step", "Step")):
        if detail.get(key):
            facts.append((label, str(detail[key])))
    if detail.get("affected_targets"):
        facts.append(("Targets", ", ".join(detail["affected_targets"]) or "none"))
    for key, label in (("last_verified_at", "Last good"), ("last_run", "Last run"), ("median_bytes", "Median"),
                       ("size_bytes", "This one"), ("free_bytes", "Free"), ("current_since", "Current since")):
        if detail.get(key) not in (None, ""):
            facts.append((label, _fmt(key, detail[key])))
    return Alert(
        kind=kind, level=wording.level, title=wording.title.format_map(values), what=message,
        next_step=next_step.format_map(values), target=target, host=host,
        backup_id=backup_id, remedy=str(detail.get("remedy") or ""), at=at or datetime.now(timezone.utc),
        facts=tuple(facts), dedupe_key=dedupe_key(kind, target, tier, message, backup_id, unique=kind in PER_ARTIFACT),
    )


#: alerts about one stored backup: each backup is its own news (two corrupted backups are two alerts),
#: while the same backup found bad again (a rolling re-verify) is held back like any repeat
PER_ARTIFACT = (events.VERIFY_FAILED, events.VERIFY_INCOMPLETE, events.SIZE_ANOMALY, events.VERIFIED)


def dedupe_key(kind: str, target: str | None, tier: str | None, message: str, backup_id: str | None, *, unique: bool) -> str:
    """Identical alerts share a key: same kind, target, tier and message, whichever run it was.

    The run id is taken out of the message, so a target failing the same way run after run
    (say, every retry of a nightly backup against a dead server) is one alert per window,
    not one per run. Alerts about one backup (``unique``: PER_ARTIFACT kinds) keep its id in the key.
    """
    text = message.replace(backup_id, "<run>") if backup_id else message
    text = _RUN_ID_RE.sub("<run>", text)  # run ids quoted in paths and keys, e.g. by a tier refusing a write
    parts = [kind, target or "", tier or "", text] + ([backup_id or ""] if unique else [])
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


#: pipeline.new_backup_id: <target>-<UTC time>-<6 hex>
_RUN_ID_RE = re.compile(r"[A-Za-z0-9._-]+-\d{8}T\d{6}Z-[0-9a-f]{6}")


class _Values(dict):
    def __missing__(self, key):
        return "?"


def _level(severity: str) -> str:
    return {"error": "failure", "warning": "warning", "info": "info"}.get(severity, "warning")


def _number(value) -> str:
    if value is None:
        return "?"
    return f"{value:g}" if isinstance(value, (int, float)) else str(value)


def _fmt(key: str, value) -> str:
    if key.endswith("_bytes") and isinstance(value, (int, float)):
        return f"{value:,.0f} bytes"
    return str(value)


def _iso(at: datetime) -> str:
    return at.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


__all__ = ["Alert", "from_event", "dedupe_key", "LEVELS", "PER_ARTIFACT", "WORDING"]
