"""Re-encryption's proof: the new object, read back from every tier, is what was written and decrypts to the old plaintext.

The rewrite knows two digests of what it produced: the new object's sha256 (the tier
hashed it while storing it) and the plaintext's, taken between decryption and
encryption, of bytes whose ciphertext matched the old revision's signed sha256. So one
read-back per tier settles everything before the new revision is committed: every copy
must hash to the new sha256, and one of them is decrypted with the new identity on the
way and must give exactly that plaintext. When the backup was verified before, its
plaintext was then proven to decompress and restore; bytes equal to it need not be
decompressed and scanned again, so no second full pass follows the commit (a backup
never verified gets the full verification instead).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from backup_tasks.defaults import REENCRYPT_PROCESSES_MIN_BYTES
from backup_tasks.errors import VerificationFailed
from backup_tasks.ops import chain, listing_store, readback
from backup_tasks.ops.runtime import Runtime
from backup_tasks.ops.verify import check_attachments, record_verified
from backup_tasks.records import keys
from backup_tasks.records.catalog import BackupRow, Status
from backup_tasks.stages import counting as progress_mod
from backup_tasks.stages.digest import HashingReader
from backup_tasks.stages.encrypt import DecryptingReader
from backup_tasks.stages.reencrypt_pipe import Digest, decrypted_digest

#: the progress stage of the read-back (the benchmark and Flower tell it from the rewrite by it)
STAGE = "verify"


def read_back(rt: Runtime, tier: str, key: str, doc: dict) -> None:
    """Read the new object in full from ``tier``: its bytes must be exactly the ones the revision signs."""
    with rt.storage(tier).get(key) as raw:
        stored = HashingReader(raw)
        stored.drain()
    _check_stored(doc, tier, (stored.size, stored.sha256))


def read_back_decrypting(rt: Runtime, tier: str, key: str, doc: dict, plain: Digest, progress) -> None:
    """``read_back``, and the bytes read decrypt with the new identity to ``plain``, the plaintext that was encrypted."""
    identities = keys.identities_for(rt.settings.identities_file, doc["encryption"]["recipients"])
    what = f"backup {doc['backup_id']}: the re-encrypted object on tier '{tier}'"
    size = doc["stored"]["size"]
    with rt.storage(tier).get(key) as raw:
        if size >= REENCRYPT_PROCESSES_MIN_BYTES:  # a child decrypts and hashes on its own core
            if progress:
                progress(STAGE, 0, size)
            stored, decrypted = decrypted_digest(raw, identities, what=what)
            if progress:
                progress(STAGE, size, size)
        else:
            hashed = HashingReader(progress_mod.reading(raw, progress, STAGE, size))
            reader = DecryptingReader(hashed, identities, what=what)
            try:
                out = HashingReader(reader)
                out.drain()
            finally:
                reader.close()
            hashed.drain()
            stored, decrypted = (hashed.size, hashed.sha256), (out.size, out.sha256)
    _check_stored(doc, tier, stored)
    if decrypted != plain:
        raise VerificationFailed(f"{what} does not decrypt to the plaintext it was made from",
                                 "the old object is kept; check the worker's memory and the tier, then run backupctl "
                                 "reencrypt again", check="plaintext-sha256")


def _check_stored(doc: dict, tier: str, stored: Digest) -> None:
    if stored != (doc["stored"]["size"], doc["stored"]["sha256"]):
        raise VerificationFailed(f"backup {doc['backup_id']}: the re-encrypted object on tier '{tier}' does not read back as written",
                                 "the old object is kept; check the tier and run backupctl reencrypt again", check="stored-sha256")


def check_side_files(rt: Runtime, doc: dict, tier: str) -> dict:
    """Before the commit: the revision's tree listing and sealed attachments open with the new identity, as verify opens them."""
    summary: dict = {}
    if doc.get("listing"):
        workdir = Path(tempfile.mkdtemp(prefix=f"reencrypt-{doc['backup_id']}-", dir=rt.staging_root()))
        try:
            found = readback.Located(doc=doc, tier=tier, key=readback.object_key(doc))
            listing = listing_store.fetch_listing(rt, doc, tier, workdir / listing_store.LISTING_NAME)
            summary.update(chain.check_listing(rt, found, listing))
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    if sealed := check_attachments(rt, doc):
        summary["attachments_checked"] = sealed
    return summary


def carries_verification(row: BackupRow) -> bool:
    """Whether the read-back is proof enough: the plaintext it matched was verified in full before."""
    return row.status == Status.VERIFIED


def record(rt: Runtime, backup_id: str, doc: dict, summary: dict, started: float) -> dict:
    """After the commit: the new manifest reads back and verifies; the read-back's proof is recorded as a verification."""
    row = rt.catalog.get(backup_id)
    found = readback.locate(rt, row)
    if found.doc.get("revision") != doc.get("revision") or found.doc["stored"] != doc["stored"]:
        raise VerificationFailed(f"backup {backup_id}: tier '{found.tier}' does not hold the manifest revision just written",
                                 "the old object is kept; run backupctl reencrypt again", check="manifest")
    result = {"location": found.tier, "locations_checked": len(row.locations), "stored_bytes": doc["stored"]["size"],
              "stored_sha256": doc["stored"]["sha256"], "plaintext_bytes": doc["plaintext"]["size"],
              "method": "reencryption read-back: every copy hashed, one decrypted to the verified revision's plaintext",
              "notes": found.notes, **summary}
    return record_verified(rt, row, result, started)
