"""Verification: prove a stored backup restores, by reading it back from storage.

It never looks at the staging file: only what a restore would read counts. Checks, in
order: manifest signature, stored size on every location, stored sha256, decryption,
decompression, the source's structural check (SQLite integrity and row counts; tar
listing and per-file sha256), and the plaintext sha256.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from pathlib import Path

from backup_tasks import alerting, timefmt
from backup_tasks.records import attachments, events, keys, manifest, markers
from backup_tasks.ops import chain, listing_store, readback
from backup_tasks.stages import counting as progress_mod
from backup_tasks.errors import BackupError, ConfigError, VerificationFailed
from backup_tasks.ops.runtime import Runtime
from backup_tasks.sources.base import source_for
from backup_tasks.sources.files.listing import ListingTally
from backup_tasks.stages.digest import HashingReader

log = logging.getLogger(__name__)


def verify_backup(rt: Runtime, backup_id: str, progress: progress_mod.Callback | None = None) -> dict:
    """Run every check; record the outcome in the catalog (and a signed marker in storage).

    ``progress(stage, bytes_done, bytes_total)`` hears how much plaintext has been checked.
    """
    row = rt.catalog.get(backup_id)
    started = time.monotonic()
    rt.catalog.set_stage(backup_id, "verify")
    try:
        result = _checks(rt, row, progress)
    except VerificationFailed as exc:
        duration = time.monotonic() - started
        rt.catalog.record_verification(backup_id, ok=False, check=exc.check, duration=duration,
                                       detail={"message": exc.message, "remedy": exc.remedy})
        events.emit(rt.catalog, events.VERIFY_FAILED, f"verification of {backup_id} failed: {exc.check}: {exc.message}",
                    target=row.target, host=row.host, backup_id=backup_id, check=exc.check, remedy=exc.remedy)
        raise
    return record_verified(rt, row, result, started)


def record_verified(rt: Runtime, row, result: dict, started: float) -> dict:
    """Record checks that passed (``started``: their ``time.monotonic()`` start): a signed marker, then the catalog.

    Re-encryption uses it too, when its own read-back already proved the new object
    decrypts to the very bytes of a verified revision.
    """
    duration = time.monotonic() - started
    at = timefmt.now()
    result["duration_seconds"] = round(duration, 3)
    # The marker first: whoever sees "verified" in the catalog (backup --wait, a test, a
    # rebuild comparing storage with the catalog) then also finds verified.json in storage.
    _write_marker(rt, row, result, at)
    rt.catalog.record_verification(row.id, ok=True, check=None, detail=result, duration=duration, at=at)
    if row.status == "uploaded":  # the run's own verify: success notice if asked for (never raises)
        alerting.notify_verified(rt, row.id)
    return {"backup_id": row.id, "target": row.target, "status": "verified", "verified_at": timefmt.iso(at), **result}


def _checks(rt: Runtime, row, progress: progress_mod.Callback | None = None) -> dict:
    found = readback.locate(rt, row)
    doc = found.doc
    for loc in row.locations:
        if loc.tier != found.tier:
            _check_other_location(rt, row, doc, loc, full=rt.settings.verify_all_locations)
    source = source_for(doc["kind"])
    workdir = Path(tempfile.mkdtemp(prefix=f"verify-{row.id}-", dir=rt.staging_root()))
    stored = plain = None
    failure: VerificationFailed | None = None
    summary: dict = {}
    try:
        # files and config: the tree listing, fetched once and proven against the signed
        # manifest, is what the archive is compared with (and, for a chain, its parents)
        listing = listing_store.fetch_listing(rt, doc, found.tier, workdir / "listing.jsonl.zst") if doc.get("listing") else None
        tally = ListingTally()  # what the archive's check read in the listing besides its members: not read twice
        try:
            with readback.plaintext(rt, found) as (stream, stored, plain):
                try:
                    summary = source.check(progress_mod.reading(stream, progress, "verify", doc["plaintext"]["size"]), doc,
                                           workdir, **({"listing": listing, "tally": tally} if listing else {}))
                    plain.drain()
                except VerificationFailed as exc:
                    failure = exc
        except VerificationFailed as exc:
            failure = exc
        # A replaced artifact may still decrypt and even parse; its hash is the decisive evidence.
        if stored is not None and stored.size:
            readback.check_digests(doc, stored, None)
        if failure is not None:
            raise failure
        readback.check_digests(doc, stored, plain)
        if listing is not None:
            summary.update(chain.check_listing(rt, found, listing, tally))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    sealed = check_attachments(rt, doc)
    return {"location": found.tier, "locations_checked": len(row.locations), "stored_bytes": stored.size,
            "stored_sha256": doc["stored"]["sha256"],
            "plaintext_bytes": plain.size, "notes": found.notes, **summary, **({"attachments_checked": sealed} if sealed else {})}


def check_attachments(rt: Runtime, doc: dict) -> list[str]:
    """Every sealed side file decrypts and matches its signed sha256 (attachments.py)."""
    names = sorted(doc.get("attachments") or {})
    if names:
        identities = keys.identities_for(rt.settings.identities_file, doc["encryption"]["recipients"] if doc.get("encryption")
                                         else [])
        for name in names:
            attachments.unseal(doc, name, identities)
    return names


def _check_other_location(rt: Runtime, row, doc: dict, loc, *, full: bool) -> None:
    """Size, and the ETag the tier returned at upload, of a copy not read in full; or all of its bytes."""
    storage = rt.storage(loc.tier)
    key = readback.object_key(doc)
    try:
        info = storage.stat(key)
    except BackupError as exc:
        raise VerificationFailed(f"backup {row.id}: location '{loc.tier}' cannot be read: {exc}",
                                 "re-run the backup or repair the tier", check="stored-size") from None
    if info.size != doc["stored"]["size"]:
        raise VerificationFailed(
            f"backup {row.id}: tier '{loc.tier}' holds {info.size} bytes, the manifest says {doc['stored']['size']}",
            "the stored object was truncated or replaced; re-run the backup", check="stored-size")
    recorded = next((l.get("etag") for l in doc["locations"] if l["tier"] == loc.tier), None)
    if recorded and info.etag and info.etag != recorded:
        raise VerificationFailed(
            f"backup {row.id}: tier '{loc.tier}' object ETag {info.etag} differs from {recorded} recorded at upload",
            "the stored object was replaced; re-run the backup", check="stored-etag")
    if full:
        with storage.get(key) as fh:
            reader = HashingReader(fh)
            reader.drain()
        if reader.sha256 != doc["stored"]["sha256"]:
            raise VerificationFailed(
                f"backup {row.id}: tier '{loc.tier}' object sha256 does not match the signed manifest",
                "the copy on that tier was altered; re-run the backup", check="stored-sha256")


def _write_marker(rt: Runtime, row, result: dict, at) -> None:
    """A signed verified.json beside the manifest, so a rebuilt catalog knows what was proven.

    A host that can verify but holds no signing key (a restore host with public keys
    only) records the verification in the catalog and leaves the marker out.
    """
    try:
        signer = rt.signer
    except ConfigError as exc:
        log.warning("backup %s verified, but no verified.json marker written: %s", row.id, exc)
        result.setdefault("notes", []).append("no signing key on this host: verified.json not written")
        return
    # The stored object's sha256 ties the marker to one manifest revision: a re-encrypted
    # backup is not "verified" by a marker its previous object earned.
    markers.write(manifest.VERIFIED_NAME, {"verified_at": timefmt.iso(at), "stored_sha256": result.get("stored_sha256"), "checks": {k: v for k, v in result.items() if k != "notes"}},
                  target=row.target, backup_id=row.id, tiers=[loc.tier for loc in row.locations], signer=signer, storage=rt.storage)
