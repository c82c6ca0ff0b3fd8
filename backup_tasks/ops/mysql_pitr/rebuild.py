"""The shipped binlogs of a lost catalog, relearned from the signed records stored beside them.

Every shipped log has a signed record (``<object key>.json``) on each tier that holds
it; a record whose signature checks and whose object is there at its recorded size
becomes a catalog row again, listing every tier that has it. Anything else is
reported, not indexed, like the backups' manifests.
"""

from __future__ import annotations

import json

from backup_tasks import timefmt
from backup_tasks.errors import BackupError, ObjectNotFound, VerificationFailed
from backup_tasks.ops.mysql_pitr.ship import PREFIX, RECORD_FORMAT
from backup_tasks.ops.runtime import Runtime
from backup_tasks.records import manifest


def rebuild_binlogs(rt: Runtime) -> dict:
    """Add the catalog rows the stored records prove and the catalog lacks; the count and what was skipped."""
    found: dict[tuple[str, str], tuple[dict, list[str]]] = {}
    skipped = []
    for tier in rt.config.tiers.values():
        storage = rt.storage(tier)
        for info in storage.list(PREFIX + "/"):
            if not info.key.endswith(".json"):
                continue
            try:
                with storage.get(info.key) as fh:
                    record = json.loads(fh.read())
                label = f"binary log record {info.key}"
                if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT:
                    raise VerificationFailed(f"{label} is not a {RECORD_FORMAT} document", check="binlog-record")
                manifest.check_signature(record, rt.verifier, backup_id=label)
                if info.key != record["stored"]["key"] + ".json":
                    raise VerificationFailed(f"{label} describes {record['stored']['key']}: it was moved", check="binlog-record")
                if storage.stat(record["stored"]["key"]).size != record["stored"]["size"]:
                    raise VerificationFailed(f"{label}: the object's size differs from the record's", check="binlog-record")
            except ObjectNotFound:
                skipped.append({"tier": tier.name, "key": info.key, "reason": "record without its binary log object"})
                continue
            except (BackupError, ValueError, KeyError, TypeError) as exc:
                skipped.append({"tier": tier.name, "key": info.key, "reason": str(exc)})
                continue
            first = found.setdefault((record["target"], record["name"]), (record, []))
            if first[0]["sha256"] != record["sha256"]:
                skipped.append({"tier": tier.name, "key": info.key, "reason": f"another {record['name']} than the one on "
                                                                            f"tier '{first[1][0]}'"})
                continue
            first[1].append(tier.name)
    for (target, name), (record, tiers) in sorted(found.items()):
        rt.catalog.record_binlog(
            target=target, name=name, seq=record["seq"], server_id=record["server_id"], size=record["size"],
            sha256=record["sha256"], first_event_at=timefmt.parse(record["first_event_at"]),
            last_event_at=timefmt.parse(record["last_event_at"]), shipped_at=timefmt.parse(record["shipped_at"]),
            key=record["stored"]["key"], size_stored=record["stored"]["size"], sha256_stored=record["stored"]["sha256"],
            detail={"tiers": tiers, "compression": record["compression"], "encryption": record["encryption"],
                    "events": record.get("events")})
    return {"binlogs": len(found), "skipped": skipped}
