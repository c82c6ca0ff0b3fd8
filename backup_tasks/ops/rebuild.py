"""Rebuild the catalog from storage alone: the manifests are the truth, the catalog an index.

Only manifests whose signature checks are trusted; anything else is reported, not
indexed. A backup stored on several tiers becomes one entry with several locations.
Shipped binary logs come back from their signed records (binlog_rebuild.py).
"""

from __future__ import annotations

from backup_tasks.records import manifest
from backup_tasks.records.catalog import Location
from backup_tasks.errors import BackupError, ObjectNotFound
from backup_tasks.ops.backup import AFTER_UPLOAD
from backup_tasks.ops.binlog_rebuild import rebuild_binlogs
from backup_tasks.ops.runtime import Runtime


def rebuild_catalog(rt: Runtime) -> dict:
    found: dict[str, tuple[dict, list[Location], dict | None]] = {}
    drilled: dict[str, dict] = {}
    skipped: list[dict] = []
    for tier in rt.config.tiers.values():
        storage = rt.storage(tier)
        for info in storage.list(""):
            if not info.key.endswith("/" + manifest.MANIFEST_NAME):
                continue
            backup_id = info.key.split("/")[-2]
            try:
                with storage.get(info.key) as fh:
                    doc = manifest.parse(fh.read(), backup_id=backup_id)
                manifest.check_signature(doc, rt.verifier, backup_id=backup_id)
                artifact = f"{manifest.prefix(doc['target'], backup_id)}/{doc['stored']['name']}"
                stat = storage.stat(artifact)
                if stat.size != doc["stored"]["size"]:
                    raise BackupError(f"artifact holds {stat.size} bytes, manifest says {doc['stored']['size']}")
            except ObjectNotFound:
                skipped.append({"tier": tier.name, "key": info.key, "reason": "manifest without its artifact"})
                continue
            except BackupError as exc:
                skipped.append({"tier": tier.name, "key": info.key, "reason": str(exc)})
                continue
            entry = found.setdefault(backup_id, (doc, [], None))
            entry[1].append(Location(tier=tier.name, key=artifact, size=stat.size))
            if entry[2] is None:
                found[backup_id] = (entry[0], entry[1], _marker(rt, storage, doc, manifest.verified_key))
            if backup_id not in drilled and (marker := _marker(rt, storage, doc, manifest.drilled_key)):
                drilled[backup_id] = marker
    count = rt.catalog.replace_backups(list(found.values()), next_stage=AFTER_UPLOAD)
    drills = rt.catalog.restore_passed_drills(list(drilled.values()))
    binlogs = rebuild_binlogs(rt)
    return {
        "tiers": list(rt.config.tiers),
        "backups": count,
        "verified": sum(1 for _, _, v in found.values() if v),
        "drills_restored": drills,
        "binlogs": binlogs["binlogs"],
        "skipped": skipped + binlogs["skipped"],
    }


def _marker(rt: Runtime, storage, doc: dict, key_for) -> dict | None:
    """The signed verified.json or drilled.json beside the manifest, if present and genuine."""
    try:
        with storage.get(key_for(doc["target"], doc["backup_id"])) as fh:
            marker = manifest.parse(fh.read(), backup_id=doc["backup_id"])
        manifest.check_signature(marker, rt.verifier, backup_id=doc["backup_id"])
        return marker
    except BackupError:
        return None
