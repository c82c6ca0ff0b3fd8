"""Rebuild the catalog from storage alone: the manifests are the truth, the catalog an index.

Only manifests whose signature checks are trusted; anything else is reported, not
indexed. A backup stored on several tiers becomes one entry with several locations; a
re-encrypted backup is indexed at its newest manifest revision. Shipped log files (WAL)
are relearnt from the signed record beside each (records/log_markers.py), so the
restorable window survives a lost catalog; shipped binary logs likewise (mysql_pitr/rebuild.py).
"""

from __future__ import annotations

from backup_tasks.records import log_markers, manifest
from backup_tasks.records.catalog import Location
from backup_tasks.errors import BackupError, ObjectNotFound
from backup_tasks.ops import readback
from backup_tasks.ops.postgres_pitr import logship
from backup_tasks.ops.keys import reencrypt, reencrypt_rewrite
from backup_tasks.ops.backup import AFTER_UPLOAD
from backup_tasks.ops.mysql_pitr.rebuild import rebuild_binlogs
from backup_tasks.ops.runtime import Runtime
from backup_tasks.timefmt import parse


def rebuild_catalog(rt: Runtime) -> dict:
    stored: dict[str, list[tuple[str, object, dict, int]]] = {}  # backup id -> (tier, storage, manifest, artifact size)
    drilled: dict[str, dict] = {}
    skipped: list[dict] = []
    logs: dict[tuple[str, str, str], tuple[dict, list[str]]] = {}  # (target, family, name) -> (record, tiers)
    for tier in rt.config.tiers.values():
        storage = rt.storage(tier)
        for info in storage.list(""):
            if info.key.startswith(logship.PREFIX + "/") and info.key.endswith(log_markers.SUFFIX):
                _log_record(rt, tier.name, storage, info.key, logs, skipped)
                continue
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
        newest = max(copies, key=lambda c: reencrypt_rewrite.revision(c[2]))[2]
        locations, verified = [], None
        for tier, storage, doc, size in copies:
            if reencrypt_rewrite.revision(doc) < reencrypt_rewrite.revision(newest):
                skipped.append({"tier": tier, "key": manifest.manifest_key(doc["target"], backup_id),
                                "reason": f"manifest revision {reencrypt_rewrite.revision(doc)} is older than revision "
                                          f"{reencrypt_rewrite.revision(newest)} on another tier: an interrupted re-encryption "
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
    for record, tiers in logs.values():
        rt.catalog.record_log(**record, tiers=tiers)
    return {
        "tiers": list(rt.config.tiers),
        "backups": count,
        "verified": sum(1 for _, _, v in found if v),
        "drills_restored": drills,
        "log_files": len(logs),
        "unfinished_reencryptions": [doc["backup_id"] for doc, _ in unfinished],
        "binlogs": binlogs["binlogs"],
        "skipped": skipped + binlogs["skipped"],
    }


_LOG_FIELDS = ("target", "family", "name", "kind", "timeline", "seq", "size_plain", "sha256_plain", "size_stored",
               "sha256_stored", "key", "compression", "key_ids", "detail")


def _log_record(rt: Runtime, tier: str, storage, marker_key: str, logs: dict, skipped: list[dict]) -> None:
    """Collect one shipped log file from its signed record, if genuine and its object is there whole."""
    try:
        with storage.get(marker_key) as fh:
            doc = log_markers.read(fh.read(), rt.verifier, marker_key=marker_key)
        stat = storage.stat(doc["key"])
        if stat.size != doc["size_stored"]:
            raise BackupError(f"log object holds {stat.size} bytes, its record says {doc['size_stored']}")
    except ObjectNotFound:
        skipped.append({"tier": tier, "key": marker_key, "reason": "log record without its object"})
        return
    except (BackupError, KeyError) as exc:
        skipped.append({"tier": tier, "key": marker_key, "reason": str(exc)})
        return
    ident = (doc["target"], doc["family"], doc["name"])
    record = {k: doc.get(k) for k in _LOG_FIELDS}
    record.update(closed_at=parse(doc["closed_at"]), uploaded_at=parse(doc["uploaded_at"]))
    logs.setdefault(ident, (record, []))[1].append(tier)


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
