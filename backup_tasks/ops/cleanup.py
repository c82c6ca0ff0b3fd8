"""Cleanup: gather the facts, let ``retention.plan_retention`` decide, then act on the plan.

    result = run_cleanup(rt, target=None, dry_run=False, now=None)

Acting on a removal, for one copy (one backup on one tier), in this order:

1. delete the artifact, and check that it is gone;
2. delete ``verified.json``, then ``manifest.json`` (the commit marker goes last, so a
   crash in between leaves a manifest without artifact, which ``catalog rebuild``
   skips and the next cleanup finishes);
3. only then drop the location from the catalog; with no copy left the entry's
   status becomes ``deleted``.

Every step is idempotent, so an interrupted cleanup is finished by the next one. An
Object-Locked copy that the plan did not know about is refused by the tier
(ObjectLocked) and reported, not counted as an error.

Debris is removed too (older than ``DEBRIS_AGE``, so nothing in flight is touched):
objects under ``<target>/<id>/`` with no manifest beside them (an upload that died
before its commit marker), staging directories of runs that are no longer running,
uploads that were never completed (on a tier with StaleUploads: S3's multipart), and
the temporary files of writes that died (on a tier with PartialWrites: local, external).

Binlog targets also lose the shipped binary logs that no kept dump can replay
(``mysql_pitr/retention.py``), after the backups' own retention decided which dumps stay.
"""

from __future__ import annotations

import logging
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

from backup_tasks import timefmt
from backup_tasks.records import audit, events, manifest
from backup_tasks.policy import retention
from backup_tasks.records.catalog import DrillResult, Status
from backup_tasks.errors import BackupError, ConfigError, ObjectLocked, ObjectNotFound, ServiceUnavailable, StorageError
from backup_tasks.ops.mysql_pitr import retention as binlog_retention
from backup_tasks.ops.runtime import Runtime
from backup_tasks.sources.files.tree_listing import NAME as LISTING_NAME
from backup_tasks.stages.encrypt import SUFFIX as ENCRYPTED_SUFFIX
from backup_tasks.storage.capabilities import ObjectLock, PartialWrites, StaleUploads

LISTING_NAMES = (LISTING_NAME, LISTING_NAME + ENCRYPTED_SUFFIX)

log = logging.getLogger(__name__)

#: an artifact without manifest, or a staging directory, younger than this may still be in flight
DEBRIS_AGE = timedelta(days=1)


def run_cleanup(rt: Runtime, target: str | None = None, *, dry_run: bool = False, now: datetime | None = None,
                actor: str = audit.BEAT) -> dict:
    """Plan retention for one target (or all), apply it unless ``dry_run``, remove debris; return a report.

    Each removed copy is audited as a ``delete`` with its reasons, the run as one ``cleanup``.
    """
    now = now or datetime.now(timezone.utc)
    targets = [rt.target(target)] if target else list(rt.config.targets.values())
    backups = gather(rt, targets, now)
    policies = {t.name: _policy(t) for t in targets}
    max_age = {name: tier.max_age_days for name, tier in rt.config.tiers.items()}
    plan = retention.plan_retention(backups, policies, max_age, now)
    report = {**plan.as_dict(), "dry_run": dry_run, "targets": [t.name for t in targets],
              "removed": [], "refused": [], "errors": [], "debris": []}
    with audit.audited(rt.catalog, "cleanup", actor=actor, target=target, detail={"dry_run": dry_run}) as entry:
        if not dry_run:
            _apply(rt, plan, report, actor)
        # Applied, the catalog says which dumps are left (a refused removal keeps its dump, and so its logs).
        report["binlogs_removed"] = binlog_retention.prune(rt, targets, set(plan.removed_entirely()) if dry_run else set(),
                                                           dry_run=dry_run, report=report)
        report["debris"] = _debris(rt, targets, target is not None, now, dry_run, report)
        report["wal_removed" if not dry_run else "would_remove_wal"] = _prune_wal(rt, targets, plan, dry_run)
        report["deleted_backups"] = sorted(plan.removed_entirely()) if not dry_run else []
        report["would_delete_backups"] = sorted(plan.removed_entirely()) if dry_run else []
        entry.detail.update(removed=len(report["removed"]), kept=report["keep"], debris=len(report["debris"]),
                            refused=len(report["refused"]), errors=len(report["errors"]))
        entry.outcome = audit.FAILED if report["errors"] else audit.OK
    return report


def _prune_wal(rt: Runtime, targets, plan, dry_run: bool) -> list[dict]:
    """Archived WAL follows the base backups of physical targets: what no kept base needs goes (postgres_pitr/log_retention.py)."""
    from backup_tasks.ops.postgres_pitr import log_retention

    out = []
    for t in targets:
        if t.kind == "postgres" and t.mode == "physical":
            out += [{"target": t.name, **e} for e in log_retention.prune(rt, t, removed_backups=set(plan.removed_entirely()),
                                                                          dry_run=dry_run)]
    return out


def exit_code(report: dict) -> int:
    """0 when everything planned was done; 3 if only unreachable storage stood in the way; else 1."""
    errors = report["errors"]
    if not errors:
        return 0
    return 3 if all(e["type"] == ServiceUnavailable.__name__ for e in errors) else 1


def _policy(target) -> retention.Policy:
    try:
        return retention.Policy.from_config(target.retention)
    except (ValueError, TypeError) as exc:
        raise ConfigError(str(exc), "keep_within takes a duration such as \"7d\" or \"12h\"",
                          where=f"target '{target.name}'", field="retention.keep_within") from None


def gather(rt: Runtime, targets, now: datetime) -> list[retention.Backup]:
    """The catalog's view of ``targets``, with drill results and Object Lock dates added."""
    out = []
    for target in targets:
        drilled = _drill_passed(rt, target.name)
        for row in rt.catalog.list(target=target.name):
            if row.status == Status.DELETED:
                continue
            copies = tuple(retention.Copy(loc.tier, _locked_until(rt, loc.tier, loc.key)) for loc in row.locations
                           if loc.tier in rt.config.tiers)
            out.append(retention.Backup(id=row.id, target=row.target, created_at=row.created_at, status=str(row.status),
                                        copies=copies, type=row.type, parent_id=row.parent_id,
                                        drill_passed=row.id in drilled))
    return out


def _drill_passed(rt: Runtime, target: str) -> set[str]:
    """Ids of the backups of ``target`` that a restore drill proved restorable."""
    return {d.backup_id for d in rt.catalog.drills(target) if d.backup_id and d.result == DrillResult.PASSED}


def _locked_until(rt: Runtime, tier_name: str, key: str) -> datetime | None:
    storage = rt.storage(tier_name)
    if not isinstance(storage, ObjectLock):
        return None
    try:
        return storage.locked_until(key)
    except BackupError as exc:
        # Unknown means "maybe locked": keep the copy this time rather than guess.
        log.warning("cleanup: cannot read the Object Lock of %s on %s (%s); keeping it", key, tier_name, exc)
        return datetime.max.replace(tzinfo=timezone.utc)


def _apply(rt: Runtime, plan: retention.Plan, report: dict, actor: str) -> None:
    by_backup: dict[str, list[retention.Decision]] = {}
    for d in plan.removals:
        by_backup.setdefault(d.backup_id, []).append(d)
    for backup_id, decisions in by_backup.items():
        row = rt.catalog.find(backup_id)
        if row is None:
            continue
        keys = {loc.tier: loc.key for loc in row.locations}
        gone = []
        for d in decisions:
            if d.tier not in keys:
                continue
            try:
                remove_copy(rt, row.target, backup_id, d.tier, keys[d.tier])
            except ObjectLocked as exc:
                report["refused"].append({"backup_id": backup_id, "tier": d.tier, "reason": exc.message})
                continue
            except BackupError as exc:
                report["errors"].append({"backup_id": backup_id, "tier": d.tier, "type": type(exc).__name__,
                                         "message": exc.message, "remedy": exc.remedy})
                events.emit(rt.catalog, events.CLEANUP_FAILED, f"cleanup could not remove {backup_id} from tier '{d.tier}': {exc}",
                            target=row.target, host=row.host, backup_id=backup_id, tier=d.tier, remedy=exc.remedy)
                continue
            gone.append(d.tier)
            report["removed"].append({"backup_id": backup_id, "target": row.target, "tier": d.tier,
                                      "key": keys[d.tier], "reasons": list(d.reasons)})
            audit.record(rt.catalog, "delete", actor=actor, outcome=audit.OK, target=row.target, backup_id=backup_id,
                         detail={"tier": d.tier, "by": "retention", "reasons": list(d.reasons)})
        if gone:
            rt.catalog.drop_locations(backup_id, gone)  # only after the objects are gone


def remove_copy(rt: Runtime, target: str, backup_id: str, tier: str, artifact_key: str) -> None:
    """Remove one stored copy in the safe order (module docstring); the caller then drops it from the catalog."""
    storage = rt.storage(tier)
    storage.delete(artifact_key)
    try:
        storage.stat(artifact_key)
    except ObjectNotFound:
        pass
    else:
        raise StorageError(f"tier '{tier}' still holds {artifact_key} after deleting it",
                           "check the tier's permissions and versioning; the manifest was left in place")
    for name in LISTING_NAMES:  # a files backup's tree listing, plain or encrypted, lies beside its artifact
        storage.delete(f"{manifest.prefix(target, backup_id)}/{name}")
    storage.delete(manifest.verified_key(target, backup_id))
    storage.delete(manifest.drilled_key(target, backup_id))
    storage.delete(manifest.manifest_key(target, backup_id))


def _debris(rt: Runtime, targets, scoped: bool, now: datetime, dry_run: bool, report: dict) -> list[dict]:
    found: list[dict] = []
    cutoff = now - DEBRIS_AGE
    running = {r.id for r in rt.catalog.list(status=Status.RUNNING)}
    names = {t.name for t in targets}
    tiers_seen = set()
    for target in targets:
        for tier in rt.config.tiers_of(target):
            tiers_seen.add(tier.name)
            try:
                found += _tier_debris(rt, tier.name, target.name, running, cutoff, dry_run)
            except BackupError as exc:
                report["errors"].append({"tier": tier.name, "type": type(exc).__name__, "message": exc.message,
                                         "remedy": exc.remedy, "during": "debris"})
    # Uploads that were never completed (a crash, or an abort that could not reach the endpoint)
    for target in targets:
        for tier in rt.config.tiers_of(target):
            try:
                found += partial_writes(rt, tier.name, f"{target.name}/", cutoff, dry_run)
            except BackupError as exc:
                report["errors"].append({"tier": tier.name, "type": type(exc).__name__, "message": exc.message,
                                         "remedy": exc.remedy, "during": "debris"})
    for name in sorted(tiers_seen):
        try:
            found += stale_uploads(rt, name, "", cutoff, dry_run)
        except BackupError as exc:
            report["errors"].append({"tier": name, "type": type(exc).__name__, "message": exc.message,
                                     "remedy": exc.remedy, "during": "debris"})
    found += _staging_debris(rt, names if scoped else None, running, cutoff, dry_run)
    return found


def partial_writes(rt: Runtime, tier: str, prefix: str, cutoff: datetime, dry_run: bool) -> list[dict]:
    """Temp files of writes under ``prefix`` that died before ``cutoff`` (a tier with PartialWrites), removed unless ``dry_run``."""
    storage = rt.storage(tier)
    if not isinstance(storage, PartialWrites):
        return []
    return [{"kind": "partial-write", "tier": tier, "key": w.key, "path": w.path, "size": w.size,
             "reason": f"temporary file of a write that never finished, untouched since {timefmt.iso(w.modified)}"}
            for w in storage.remove_partial_writes(prefix, cutoff, dry_run=dry_run)]


def stale_uploads(rt: Runtime, tier: str, prefix: str, cutoff: datetime, dry_run: bool) -> list[dict]:
    """Uploads under ``prefix`` started before ``cutoff`` and never finished (a tier with StaleUploads), aborted unless ``dry_run``."""
    storage = rt.storage(tier)
    if not isinstance(storage, StaleUploads):
        return []
    return [{"kind": "incomplete-upload", "tier": tier, "key": key,
             "reason": "multipart upload never completed, older than a day"}
            for key in storage.abort_stale_uploads(cutoff, prefix=prefix, dry_run=dry_run)]


def _tier_debris(rt: Runtime, tier: str, target: str, running: set[str], cutoff: datetime, dry_run: bool) -> list[dict]:
    storage = rt.storage(tier)
    groups: dict[str, list] = {}
    for info in storage.list(f"{target}/"):
        run = manifest.backup_of_key(info.key)
        if run is not None:
            groups.setdefault(run[1], []).append(info)
    out = []
    for backup_id, infos in groups.items():
        if any(i.key.endswith("/" + manifest.MANIFEST_NAME) for i in infos) or backup_id in running:
            continue
        if max(i.modified for i in infos) > cutoff:
            continue  # may still be uploading
        for info in infos:
            if not dry_run:
                storage.delete(info.key)
            out.append({"kind": "artifact-without-manifest", "tier": tier, "key": info.key, "size": info.size,
                        "reason": "stored object without a manifest (an upload that never committed), older than a day"})
    return out


def _staging_debris(rt: Runtime, targets: set[str] | None, running: set[str], cutoff: datetime, dry_run: bool) -> list[dict]:
    root = Path(rt.settings.staging_dir)
    if not root.is_dir():
        return []
    out = []
    for entry in sorted(root.iterdir()):
        if not entry.is_dir() or entry.name in running or entry.name.startswith("."):
            continue
        row = rt.catalog.find(entry.name)
        if targets is not None and (row is None or row.target not in targets):
            continue
        modified = datetime.fromtimestamp(max((p.stat().st_mtime for p in entry.rglob("*")), default=entry.stat().st_mtime),
                                          tz=timezone.utc)
        if modified > cutoff:
            continue
        if not dry_run:
            shutil.rmtree(entry, ignore_errors=True)
        out.append({"kind": "staging", "path": str(entry),
                    "reason": "staging directory of a run that is not running, untouched for a day"})
    return out
