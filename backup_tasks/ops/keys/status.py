"""Gather what depends on each encryption key, for ``keys status`` (the roles are decided in policy/key_roles.py).

The catalog indexes every stored backup's manifest, and a manifest names the key ids its
object is encrypted to; every archived WAL file and binlog is recorded with its key ids
too. So the counts come from the catalog without reading storage. Log files count like
backups: a key that one WAL segment or binlog still needs is never retired, since the
point-in-time window through it would be lost with its identity.
"""

from __future__ import annotations

import logging

from backup_tasks import timefmt
from backup_tasks.errors import BackupError
from backup_tasks.ops.keys.reencrypt import pending
from backup_tasks.ops.runtime import Runtime
from backup_tasks.ops.postgres_pitr.wal import FAMILY as WAL_FAMILY
from backup_tasks.policy.key_roles import Usage, decide
from backup_tasks.records import keys
from backup_tasks.records.catalog import Status
from backup_tasks.records.catalog.binlogs import FAMILY as BINLOG_FAMILY

log = logging.getLogger(__name__)

WAL, BINLOG = WAL_FAMILY, BINLOG_FAMILY
_FAMILY_WORDS = {WAL: "WAL files", BINLOG: "binlogs"}

#: audited actions whose detail names a key id this system made
_KEY_ACTIONS = ("keys.generate", "keys.rotate")


def key_ids_of(summary: dict | None) -> list[str]:
    """The key ids a stored object is encrypted to (empty when stored unencrypted)."""
    encryption = (summary or {}).get("encryption") or {}
    return list(encryption.get("recipients") or [])


def key_status(rt: Runtime) -> dict:
    current = [keys.key_id(r) for r in rt.settings.recipients]
    usage: dict[str, Usage] = {}
    unencrypted = 0
    for row in rt.catalog.list():
        if row.status == Status.DELETED or not row.locations or not row.manifest:
            continue
        ids = key_ids_of(row.manifest)
        if not ids:
            unencrypted += 1
        # A re-encrypted object started to depend on its key when it was re-encrypted, not when backed up.
        since = timefmt.parse(row.manifest.get("reencrypted_at")) or row.created_at
        for kid in ids:
            used = usage.setdefault(kid, Usage())
            used.backups += 1
            for loc in row.locations:
                used.objects[loc.tier] = used.objects.get(loc.tier, 0) + 1
                used.backups_per_tier[loc.tier] = used.backups_per_tier.get(loc.tier, 0) + 1
            used.first_used = min(used.first_used, since) if used.first_used else since
        if pending(row.manifest):  # an interrupted re-encryption left the old object stored
            for kid in row.manifest["replaces"].get("key_ids") or []:
                used = usage.setdefault(kid, Usage())
                used.backups += 1
                for loc in row.locations:
                    used.objects[loc.tier] = used.objects.get(loc.tier, 0) + 1
                    used.backups_per_tier[loc.tier] = used.backups_per_tier.get(loc.tier, 0) + 1
    _count_logs(rt, usage)
    here, warnings = _identities_here(rt)
    made, previous = made_keys(rt)
    fresh = [k for k in made if k not in previous and k not in usage]
    decided = decide(current, usage, [*here, *previous], fresh)
    for k in decided:
        if k.role != "retired" and k.usage.in_use and rt.settings.identities_file and k.key_id not in here:
            warnings.append(f"{_what_depends(k.usage)} depend on key {k.key_id}, whose identity is not in "
                            f"{rt.settings.identities_file}: they cannot be verified or restored on this host")
    return {
        "current": current,
        "keys": [{
            "key_id": k.key_id,
            "role": str(k.role),
            "first_used": timefmt.iso(k.usage.first_used),
            "made_at": made.get(k.key_id),
            "backups": k.usage.backups,
            "wal_files": k.usage.logs.get(WAL, 0),
            "binlogs": k.usage.logs.get(BINLOG, 0),
            "tiers": {t: {"backups": k.usage.backups_per_tier.get(t, 0), "objects": n,
                          "wal_files": k.usage.logs_per_tier.get(WAL, {}).get(t, 0),
                          "binlogs": k.usage.logs_per_tier.get(BINLOG, {}).get(t, 0)}
                      for t, n in sorted(k.usage.objects.items())},
            "identity_here": k.key_id in here,
            "deletable": k.deletable,
        } for k in decided],
        "unencrypted_backups": unencrypted,
        "warnings": warnings,
    }


def _count_logs(rt: Runtime, usage: dict[str, Usage]) -> None:
    """Add every stored WAL file and binlog to the keys it is encrypted to (a log stored unencrypted needs none)."""
    for use in [*rt.catalog.log_key_uses(), *rt.catalog.binlog_key_uses()]:
        for kid in use.key_ids:
            used = usage.setdefault(kid, Usage())
            used.logs[use.family] = used.logs.get(use.family, 0) + use.count
            per_tier = used.logs_per_tier.setdefault(use.family, {})
            for tier in use.tiers:
                per_tier[tier] = per_tier.get(tier, 0) + use.count
                used.objects[tier] = used.objects.get(tier, 0) + use.count
            if use.first_at is not None:
                used.first_used = min(used.first_used, use.first_at) if used.first_used else use.first_at


def _what_depends(used: Usage) -> str:
    parts = [f"{used.backups} backups"] if used.backups else []
    families = [*_FAMILY_WORDS, *sorted(set(used.logs) - set(_FAMILY_WORDS))]
    parts += [f"{used.logs[f]} {_FAMILY_WORDS.get(f, f + ' files')}" for f in families if used.logs.get(f)]
    return " and ".join(parts) or "stored objects"


def _identities_here(rt: Runtime) -> tuple[set[str], list[str]]:
    try:
        return set(keys.load_identities(rt.settings.identities_file)), []
    except BackupError as exc:
        return set(), [str(exc)]


def made_keys(rt: Runtime) -> tuple[dict[str, str], set[str]]:
    """From the audit log: key ids that ``keys generate`` or ``keys rotate`` made, with when,
    and the key ids that were current when a rotation was made (so were current once)."""
    made: dict[str, str] = {}
    previous: set[str] = set()
    for action in _KEY_ACTIONS:
        for entry in rt.catalog.audit(action=action):  # newest first: the oldest time wins
            detail = entry.detail or {}
            if detail.get("recipient_key_id"):
                made[detail["recipient_key_id"]] = timefmt.iso(entry.at)
            previous.update(detail.get("previous_recipient_key_ids") or [])
    return made, previous
