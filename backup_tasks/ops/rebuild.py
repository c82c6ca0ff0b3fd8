"""Rebuild the catalog from storage alone: the manifests are the truth, the catalog an index.

Only manifests whose signature checks are trusted; anything else is reported, not
indexed. A backup stored on several tiers becomes one entry with several locations; a
re-encrypted backup is indexed at its newest manifest revision. Shipped binary logs come
back from their signed records (binlog_rebuild.py).
"""

from __future__ import annotations

from backup_tasks.records import manifest
from backup_tasks.records.catalog import Location
from backup_tasks.errors import BackupError, ObjectNotFound
from backup_tasks.ops import readback, reencrypt
from backup_tasks.ops.backup import AFTER_UPLOAD
from backup_tasks.ops.binlog_rebuild import rebuild_binlogs
from backup_tasks.ops.runtime import Runtime


def rebuild_catalog(rt: Runtime) -> dict:
    stored: dict[str, list[tuple[str, object, dict, int]]] = {}  # backup id -> (tier, storage, manifest, artifact size)
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
                stat = storage.stat(readback.object_key(doc))
                if stat.size != doc["stored"]["size"]:
                    raise BackupError(f"artifact holds {stat.size} bytes, manifest says {doc['stored']['size']}")
            except ObjectNotFound:
                skipped.append({"tier": tier.name, "key": info.key, "reason": "manifest without its artifact"})
                continue
            except BackupError as exc:
                skipped.append({"tier": tier.name, "key": info.key, "reason": str(exc)})
                continue
            stored.setdefault(backup_id, []).append((tier.name, storage, doc, stat.size))
            if backup_id not in drilled and (marker := _marker(rt, storage, doc, manifest.drilled_key)):
                drilled[backup_id] = marker
    found: list[tuple[dict, list[Location], dict | None]] = []
    unfinished: list[tuple[dict, list[Location]]] = []
    for backup_id, copies in stored.items():
        # Tiers can disagree only while a re-encryption is interrupted: the newest revision
        # is the backup; an older one on another tier is reported for reencrypt to finish.
        newest = max(copies, key=lambda c: reencrypt.revision(c[2]))[2]
        locations, verified = [], None
        for tier, storage, doc, size in copies:
            if reencrypt.revision(doc) < reencrypt.revision(newest):
                skipped.append({"tier": tier, "key": manifest.manifest_key(doc["target"], backup_id),
                                "reason": f"manifest revision {reencrypt.revision(doc)} is older than revision "
                                          f"{reencrypt.revision(newest)} on another tier: an interrupted re-encryption "
                                          "(backupctl reencrypt finishes it)"})
                continue
            locations.append(Location(tier=tier, key=readback.object_key(doc), size=size))
            verified = verified or _marker(rt, storage, doc, manifest.verified_key)
        found.append((newest, locations, verified))
        if reencrypt.replaced_object_stored(rt, newest, [tier for tier, *_ in copies]):
            unfinished.append((newest, locations))
    count = rt.catalog.replace_backups(found, next_stage=AFTER_UPLOAD)
    for doc, locations in unfinished:  # so keys status counts the old object and reencrypt picks it up
        reencrypt.record_revision(rt, doc["backup_id"], doc, locations, old_object=reencrypt.PENDING)
    drills = rt.catalog.restore_passed_drills(list(drilled.values()))
    binlogs = rebuild_binlogs(rt)
    return {
        "tiers": list(rt.config.tiers),
        "backups": count,
        "verified": sum(1 for _, _, v in found if v),
        "drills_restored": drills,
        "unfinished_reencryptions": [doc["backup_id"] for doc, _ in unfinished],
        "binlogs": binlogs["binlogs"],
        "skipped": skipped + binlogs["skipped"],
    }


def _marker(rt: Runtime, storage, doc: dict, key_for) -> dict | None:
    """The signed verified.json or drilled.json beside the manifest, if present, genuine and about this revision.

    A marker naming another stored object's sha256 was earned by an earlier manifest
    revision (before a re-encryption) and proves nothing about this one.
    """
    try:
        with storage.get(key_for(doc["target"], doc["backup_id"])) as fh:
            marker = manifest.parse(fh.read(), backup_id=doc["backup_id"])
        manifest.check_signature(marker, rt.verifier, backup_id=doc["backup_id"])
    except BackupError:
        return None
    if marker.get("stored_sha256") not in (None, doc["stored"]["sha256"]):
        return None
    return marker
