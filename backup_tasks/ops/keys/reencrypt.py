"""Re-encryption: move a stored backup onto the current recipients, so no backup stays on an old key.

age has no way to re-wrap a file key from its CLI, so this is decrypt → encrypt, streamed
from the stored object straight into a new stored object (no plaintext on any disk). The
order of the steps is what makes a kill at any point harmless:

1. the new object is written under a new name (``<name>.r<revision>.age``) on one tier,
   then copied to the backup's other tiers;
2. every new copy is read back in full and must be, byte for byte (sha256), what the
   encryption produced, and one copy is decrypted on the way with the new identity and
   must give exactly the plaintext that was encrypted; the old object's bytes were
   checked against its signed manifest on the way in, so nothing forged is ever re-signed;
3. a new signed manifest revision replaces the old one on every tier: it records the
   key change and names the revision it replaces (the commit point);
4. the backup is verified: the new manifest reads back and verifies, and for a backup
   verified before, step 2 proved its new object decrypts to that verified plaintext
   (ops/keys/reencrypt_verify.py); any other (a backup never verified, or a rerun finishing
   an interrupted revision) is verified in full through the restore path (``verify_backup``);
5. only then are the old objects deleted.

Before 3 the old manifest and the old object stand, and the new object is unreferenced
debris that a rerun overwrites. From 3 on, the new manifest and the new object stand; a
rerun finds the revision whose replaced object still exists and finishes steps 2-5
(including tiers whose manifest the kill left on the old revision). Never neither.

Steps 1-2, the part that streams the bytes, are in ops/keys/reencrypt_rewrite.py; this module
decides what to do with a backup and commits, verifies and cleans up.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from backup_tasks import timefmt
from backup_tasks.errors import BackupError, InputError, ObjectLocked, ObjectNotFound, StorageError, VerificationFailed
from backup_tasks.ops import readback
from backup_tasks.ops.keys import reencrypt_rewrite, reencrypt_verify
from backup_tasks.ops.keys.reencrypt_rewrite import key_ids, revision
from backup_tasks.ops.runtime import Runtime
from backup_tasks.ops.verify import verify_backup
from backup_tasks.records import audit, keys, manifest, markers
from backup_tasks.records.catalog import BackupRow, Location, Status
from backup_tasks.stages import counting as progress_mod
from backup_tasks.stages.reencrypt_pipe import Digest
from backup_tasks.storage.capabilities import ObjectLock

log = logging.getLogger(__name__)

#: the audit action of one backup's re-encryption (its outcome: ok, failed, or deferred by an Object Lock)
AUDIT_ACTION = "backup.reencrypt"
#: what the catalog's copy of a revision says about the object it replaced
PENDING, DELETED = "present", "deleted"

REENCRYPTED = "reencrypted"
CURRENT = "current"
SKIPPED = "skipped"
FAILED = "failed"
PLANNED = "would-reencrypt"


def pending(summary: dict | None) -> bool:
    """The catalog says this backup's revision still has its replaced object stored somewhere."""
    return ((summary or {}).get("replaces") or {}).get("old_object") == PENDING


def select(rt: Runtime, *, from_key: str | None = None, target: str | None = None) -> list[BackupRow]:
    """The stored backups a ``reencrypt`` run has work for, oldest first.

    A backup is picked when it is encrypted to something else than the current
    recipients (with ``from_key``: when that key is among its keys), or when an earlier
    run was interrupted after its manifest revision and left the old object behind.
    """
    current = set(current_key_ids(rt))
    picked = []
    for row in reversed(rt.catalog.list(target=target)):
        if row.status not in (Status.UPLOADED, Status.VERIFIED) or not row.locations or not row.manifest:
            continue
        ids = key_ids(row.manifest)
        if pending(row.manifest) or (ids and set(ids) != current and (from_key is None or from_key in ids)):
            picked.append(row)
    return picked


def plan(row: BackupRow, rt: Runtime) -> dict:
    """What a run would do with ``row``, without touching storage beyond Object Lock queries (``--dry-run``)."""
    out = {**_outcome(row, PLANNED), "to_key_ids": current_key_ids(rt)}
    if locked := _locked_copies(rt, row.target, row.manifest, [loc.tier for loc in row.locations]):
        return {**out, "outcome": SKIPPED, **locked}
    return out


@dataclass
class _Copy:
    """One tier's view of the backup: its manifest as stored there."""

    tier: str
    doc: dict


def reencrypt_backup(rt: Runtime, backup_id: str, *, from_key: str | None = None, actor: str = audit.BEAT,
                     progress: progress_mod.Callback | None = None) -> dict:
    """Re-encrypt one backup to the current recipients, or finish an interrupted re-encryption. Idempotent.

    Returns the outcome (``reencrypted``, ``current``, ``skipped`` with a reason, or
    ``failed`` with the error); an interrupted or failed run leaves a verifiable copy.
    """
    row = rt.catalog.get(backup_id)
    try:
        result = _run(rt, row, from_key, progress)
    except BackupError as exc:
        log.warning("re-encryption of %s failed: %s", backup_id, exc)
        result = {**_outcome(row, FAILED), "reason": exc.message, "remedy": exc.remedy}
    # Work an Object Lock held back (a skip, or an old object whose deletion was refused after
    # the new revision was committed) is audited as deferred, with the lock's end: the daily
    # retry (reencrypt_retry.py) finds it there and runs it again once the lock is over.
    deferred = bool(result.get("locked_until"))
    if result["outcome"] in (REENCRYPTED, FAILED) or deferred:
        outcome = audit.DEFERRED if deferred else audit.OK if result["outcome"] == REENCRYPTED else audit.FAILED
        audit.record(rt.catalog, AUDIT_ACTION, actor=actor, outcome=outcome, target=row.target, backup_id=backup_id,
                     detail={**{k: result[k] for k in ("from_key_ids", "to_key_ids", "revision", "reason", "locked_until")
                                if result.get(k) is not None}, **({"from_key": from_key} if from_key else {})})
    return result


def _run(rt: Runtime, row: BackupRow, from_key: str | None, progress) -> dict:
    if row.status not in (Status.UPLOADED, Status.VERIFIED):
        return {**_outcome(row, SKIPPED), "reason": f"backup is {row.status}"}
    current = current_key_ids(rt)
    copies = _read_manifests(rt, row)
    newest = max((c.doc for c in copies), key=revision)
    finished = False
    if _has_leftovers(rt, newest, copies):
        held = _finish(rt, row, newest, copies, progress)
        if held:
            return {**_outcome(row, SKIPPED, newest), **held}
        finished = True
        copies = [_Copy(c.tier, newest) for c in copies]
    ids = key_ids(newest)
    if not ids:
        return {**_outcome(row, SKIPPED, newest), "reason": "stored unencrypted: there is no key to move it from"}
    if set(ids) == set(current):
        if finished:  # an interrupted run's revision, now complete: it moved the backup from the replaced key
            return _outcome(row, REENCRYPTED, newest, before={"encryption": {"recipients": newest["replaces"]["key_ids"]}})
        return _outcome(row, CURRENT, newest)
    if from_key and from_key not in ids:
        return {**_outcome(row, SKIPPED, newest), "reason": f"not encrypted to key {from_key}"}
    tiers = [loc["tier"] for loc in newest["locations"]]
    if locked := _locked_copies(rt, row.target, newest, tiers):
        return {**_outcome(row, SKIPPED, newest), **locked}
    doc, plain = reencrypt_rewrite.rewrite(rt, row, newest, current, progress)
    held = _finish(rt, row, doc, copies, progress, plain=plain)
    return {**_outcome(row, REENCRYPTED, doc, before=newest), **(held or {})}


def _outcome(row: BackupRow, outcome: str, doc: dict | None = None, *, before: dict | None = None) -> dict:
    doc = doc or row.manifest or {}
    return {"backup_id": row.id, "target": row.target, "outcome": outcome,
            "from_key_ids": key_ids(before or doc), "to_key_ids": key_ids(doc), "revision": revision(doc)}


def current_key_ids(rt: Runtime) -> list[str]:
    if not rt.settings.recipients:
        raise InputError("no current recipients to re-encrypt to",
                         "set recipients_file (or recipients) in [settings] to the new key: backupctl keys rotate prints the change")
    return [keys.key_id(r) for r in rt.settings.recipients]


def _read_manifests(rt: Runtime, row: BackupRow) -> list[_Copy]:
    """The signed manifest on every tier the backup is stored on (a tier a rebuild left out included)."""
    tiers = list(dict.fromkeys(loc.tier for loc in row.locations))
    copies: list[_Copy] = []
    while len(copies) < len(tiers):
        tier = tiers[len(copies)]
        with rt.storage(tier).get(manifest.manifest_key(row.target, row.id)) as fh:
            doc = manifest.parse(fh.read(), backup_id=row.id)
        manifest.check_signature(doc, rt.verifier, backup_id=row.id)
        copies.append(_Copy(tier, doc))
        tiers += [loc["tier"] for loc in doc["locations"] if loc["tier"] not in tiers and loc["tier"] in rt.config.tiers]
    return copies


def _has_leftovers(rt: Runtime, doc: dict, copies: list[_Copy]) -> bool:
    """A revision not yet on every tier, or whose replaced object is still stored: an interrupted run."""
    if "replaces" not in doc:
        return False
    return any(revision(c.doc) < revision(doc) for c in copies) or replaced_object_stored(rt, doc, [c.tier for c in copies])


def replaced_object_stored(rt: Runtime, doc: dict, tiers: list[str]) -> bool:
    """Whether the object that revision ``doc`` replaced is still on one of ``tiers`` (not yet deleted)."""
    if "replaces" not in doc:
        return False
    old_key = f"{manifest.prefix(doc['target'], doc['backup_id'])}/{doc['replaces']['stored']['name']}"
    return old_key != readback.object_key(doc) and any(_exists(rt, tier, old_key) for tier in tiers)


def _exists(rt: Runtime, tier: str, key: str) -> bool:
    try:
        rt.storage(tier).stat(key)
        return True
    except ObjectNotFound:
        return False


def _locked_copies(rt: Runtime, target: str, doc: dict, tiers: list[str]) -> dict | None:
    """Why the old object could not be deleted now (Object Lock) and when it can, or None.

    Such a backup is left as it is, whole, rather than moved on some tiers and not on
    others: one manifest describes all its copies. Returns ``reason`` and ``locked_until``
    (the latest lock's end among the tiers, when the whole backup can move); the daily
    retry runs it again after that.
    """
    key = f"{manifest.prefix(target, doc['backup_id'])}/{doc['stored']['name']}"
    locks = {}
    for tier in tiers:
        storage = rt.storage(tier)
        if isinstance(storage, ObjectLock) and (until := storage.locked_until(key)) is not None:
            locks[tier] = until
    if not locks:
        return None
    tier, until = max(locks.items(), key=lambda item: item[1])
    return {"reason": f"the copy on tier '{tier}' is Object-Locked until {timefmt.iso(until)}: its old object cannot be "
                      "deleted before then; it is retried after that (or run backupctl reencrypt again then)",
            "locked_until": timefmt.iso(until)}


def _finish_listing(rt: Runtime, row: BackupRow, doc: dict, tiers: list[str]) -> None:
    """Before the commit: the revision's listing is on every tier (a rerun after a kill copies what is missing)."""
    info = doc.get("listing") or {}
    if revision(doc) < 2 or not info.get("encrypted"):
        return
    _spread(rt, tiers, f"{manifest.prefix(row.target, row.id)}/{info['name']}", info["size"], info["sha256"], VerificationFailed(
        f"backup {row.id}: no tier holds the tree listing of manifest revision {revision(doc)}",
        "run backupctl reencrypt again: it rewrites the revision from the old one", check="listing"))


def _spread(rt: Runtime, tiers: list[str], key: str, size: int, sha256: str, missing: VerificationFailed) -> None:
    """``key`` on every tier of ``tiers``, copied from one that holds it at ``size``; ``missing`` when none does.

    A kill between the write on the first tier and the copies leaves some tiers without
    the revision's objects; a rerun completes them from a holder, checked by ``sha256``.
    """
    holders = [t for t in tiers if _has_size(rt, t, key, size)]
    if not holders:
        raise missing
    for tier in tiers:
        if tier not in holders:
            reencrypt_rewrite.copy_object(rt, holders[0], tier, key, sha256)


def _has_size(rt: Runtime, tier: str, key: str, size: int) -> bool:
    try:
        return rt.storage(tier).stat(key).size == size
    except (ObjectNotFound, StorageError):
        return False


def _finish(rt: Runtime, row: BackupRow, doc: dict, copies: list[_Copy], progress, *, plain: Digest | None = None) -> dict | None:
    """Steps 2-5 for revision ``doc``: copies complete and proven, manifest everywhere, verified, old objects gone.

    ``plain`` is the plaintext's digest when this run made the revision: then the
    read-back decrypts one copy too (reencrypt_verify.py), and that is the verification
    of a backup verified before. A rerun finishing an interrupted revision has no such
    digest and verifies in full after the commit. Returns why an old object is still
    stored (Object Lock: ``reason`` and, when the tier tells it, ``locked_until``), else None.
    """
    started = time.monotonic()
    prefix = manifest.prefix(row.target, row.id)
    tiers = [loc["tier"] for loc in doc["locations"]]
    new_key = f"{prefix}/{doc['stored']['name']}"
    keys.identities_for(rt.settings.identities_file, key_ids(doc))  # KeyMissing before anything is committed: verify needs it
    _spread(rt, tiers, new_key, doc["stored"]["size"], doc["stored"]["sha256"], VerificationFailed(
        f"backup {row.id}: no tier holds the object of manifest revision {revision(doc)}",
        "restore the previous manifest revision from a tier that still has it, or run a new backup", check="stored-size"))
    for tier in tiers:
        if plain is not None and tier == tiers[0]:
            reencrypt_verify.read_back_decrypting(rt, tier, new_key, doc, plain, progress)
        else:
            reencrypt_verify.read_back(rt, tier, new_key, doc)
    _finish_listing(rt, row, doc, tiers)
    proven = plain is not None and reencrypt_verify.carries_verification(row)
    summary = reencrypt_verify.check_side_files(rt, doc, tiers[0]) if proven else {}
    behind = [c.tier for c in copies if revision(c.doc) < revision(doc)]
    if "signature" not in doc:  # a revision made in this run: sign it and write it on every tier (the commit point)
        doc = markers.write(manifest.MANIFEST_NAME, {k: v for k, v in doc.items() if k not in ("format", "backup_id")},
                            target=row.target, backup_id=row.id, tiers=tiers, signer=rt.signer, storage=rt.storage)
    elif behind:
        doc = markers.write(manifest.MANIFEST_NAME, {k: v for k, v in doc.items() if k not in ("format", "backup_id", "signature")},
                            target=row.target, backup_id=row.id, tiers=[t for t in tiers if t in behind], signer=rt.signer,
                            storage=rt.storage)
    locations = [Location(tier=t, key=new_key, size=doc["stored"]["size"]) for t in tiers]
    record_revision(rt, row.id, doc, locations, old_object=PENDING)
    if proven:
        reencrypt_verify.record(rt, row.id, doc, summary, started)
    else:
        verify_backup(rt, row.id, progress=progress)
    old_key = f"{prefix}/{doc['replaces']['stored']['name']}"
    if old_key == new_key:
        return None
    for tier in tiers:
        try:
            rt.storage(tier).delete(old_key)
        except ObjectLocked as exc:
            storage = rt.storage(tier)
            until = storage.locked_until(old_key) if isinstance(storage, ObjectLock) else None
            return {"reason": f"the old object on tier '{tier}' is Object-Locked ({exc.message}); it is retried after its lock "
                              "ends (or run backupctl reencrypt again then)",
                    **({"locked_until": timefmt.iso(until)} if until else {})}
    replaced_listing = (doc["replaces"].get("listing") or {}).get("name")
    if replaced_listing and replaced_listing != (doc.get("listing") or {}).get("name"):
        for tier in tiers:
            reencrypt_rewrite.delete_quietly(rt, tier, f"{prefix}/{replaced_listing}")
    record_revision(rt, row.id, doc, locations, old_object=DELETED)
    return None


def record_revision(rt: Runtime, backup_id: str, doc: dict, locations: list[Location], *, old_object: str) -> None:
    """Index revision ``doc``, noting whether the object it replaced is still stored (``keys status`` counts it)."""
    summary = manifest.summary(doc)
    if "replaces" in summary:
        summary["replaces"] = {**summary["replaces"], "old_object": old_object}
    rt.catalog.record_revision(backup_id, doc, locations, summary=summary)
