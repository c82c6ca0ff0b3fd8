"""How old each encryption key is, for the rotation reminder (watchdog) and the DR report.

A key's start is its first use, taken from every backup the catalog ever indexed,
deleted ones included: retention removing the oldest backups must not make the current
key look younger than it is, or a 7-day retention would hide a key that was never
rotated. The rule that turns those times into an age is policy/key_age.py.
"""

from __future__ import annotations

from datetime import datetime

from backup_tasks import timefmt
from backup_tasks.ops.keys.status import key_ids_of, key_status, made_keys
from backup_tasks.ops.runtime import Runtime
from backup_tasks.policy import key_age
from backup_tasks.records import events, keys


def first_uses(rt: Runtime) -> dict[str, datetime]:
    """Per key id, when the first object still indexed in the catalog was encrypted to it."""
    first: dict[str, datetime] = {}

    def seen(kid: str, at: datetime | None) -> None:
        if at is not None and (kid not in first or at < first[kid]):
            first[kid] = at

    for row in rt.catalog.list():
        summary = row.manifest or {}
        # a re-encrypted object depends on its key since it was re-encrypted; the revision it
        # replaced (the backup's own, when revision 1) was written at the backup's time
        reencrypted = timefmt.parse(summary.get("reencrypted_at"))
        for kid in key_ids_of(summary):
            seen(kid, reencrypted or row.created_at)
        replaced = summary.get("replaces") or {}
        if int(replaced.get("revision") or 0) == 1:
            for kid in replaced.get("key_ids") or []:
                seen(kid, row.created_at)
    return first


def starts(rt: Runtime) -> dict[str, datetime | None]:
    """Per key id known to the catalog or the audit log: since when it has been in use (policy.key_age.became_current)."""
    used = first_uses(rt)
    made = {kid: timefmt.parse(at) for kid, at in made_keys(rt)[0].items()}
    return {kid: key_age.became_current(used.get(kid), made.get(kid)) for kid in dict.fromkeys([*used, *made])}


def current_ages(rt: Runtime, now: datetime) -> list[dict]:
    """Each current recipient's key id, since when it is current, its age in days and whether it is due for rotation."""
    since = starts(rt)
    out = []
    for kid in (keys.key_id(r) for r in rt.settings.recipients):
        start = since.get(kid)
        out.append({"key_id": kid, "current_since": timefmt.iso(start) if start else None,
                    "age_days": _days(key_age.age_days(start, now)),
                    "due": key_age.due(start, now, rt.settings.key_max_age_days)})
    return out


def findings(rt: Runtime, now: datetime, open_keys: set[str], finding) -> list:
    """The watchdog's rotation reminders: one condition per current key; ``finding`` builds the watchdog's Finding.

    A key that was open and is no longer current was rotated: its condition resolves.
    """
    limit = rt.settings.key_max_age_days
    out = []
    current = set()
    for k in current_ages(rt, now):
        kid = k["key_id"]
        current.add(kid)
        detail = {"key_id": kid, "current_since": k["current_since"] or "unknown", "key_max_age_days": limit}
        out.append(finding(
            f"{events.KEY_MAX_AGE}:{kid}", events.KEY_MAX_AGE, k["due"], detail=detail,
            message=(f"encryption key {kid} has been current since {k['current_since']} ({k['age_days']:.0f} days), "
                     f"longer than key_max_age_days ({limit}): rotate it and re-encrypt the backups") if k["due"] else
                    f"encryption key {kid} is current for {k['age_days'] or 0:.0f} days, within key_max_age_days ({limit or 'off'})"))
    prefix = f"{events.KEY_MAX_AGE}:"
    for key in sorted(open_keys):
        kid = key[len(prefix):]
        if key.startswith(prefix) and kid not in current:
            out.append(finding(key, events.KEY_MAX_AGE, False, detail={"key_id": kid},
                               message=f"encryption key {kid} is no longer current: it was rotated"))
    return out


def report(rt: Runtime, now: datetime) -> dict:
    """The DR report's key section: every key's role and age, and what still depends on keys that are not current."""
    status = key_status(rt)
    since = starts(rt)
    limit = rt.settings.key_max_age_days
    listed = []
    for k in status["keys"]:
        start = since.get(k["key_id"])
        listed.append({"key_id": k["key_id"], "role": k["role"], "since": timefmt.iso(start) if start else None,
                       "age_days": _days(key_age.age_days(start, now)),
                       "due": k["role"] == "current" and key_age.due(start, now, limit),
                       "backups": k["backups"], "wal_files": k["wal_files"], "binlogs": k["binlogs"],
                       "objects": sum(t["objects"] for t in k["tiers"].values())})
    old = [k for k in listed if k["role"] == "old"]
    return {"max_age_days": limit, "keys": listed,
            "backups_on_old_keys": sum(k["backups"] for k in old), "objects_on_old_keys": sum(k["objects"] for k in old),
            "logs_on_old_keys": sum(k["wal_files"] + k["binlogs"] for k in old)}


def _days(value: float | None) -> float | None:
    return None if value is None else round(value, 1)
