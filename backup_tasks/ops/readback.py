"""Reading a stored backup back: find a healthy location, trust its manifest, stream plaintext.

Verify and restore share this path so that what verify proves is exactly what restore
would read. Every byte of the stored object is hashed as it streams, and the hashes are
compared with the signed manifest before anything is declared good.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import BinaryIO, Iterator

import zstandard

from backup_tasks import defaults
from backup_tasks.records import keys, manifest
from backup_tasks.records.catalog import BackupRow, Status
from backup_tasks.errors import InputError, ObjectNotFound, StorageError, TransientError, VerificationFailed
from backup_tasks.ops.runtime import Runtime
from backup_tasks.stages.compress import decompressing_reader
from backup_tasks.stages.digest import HashingReader
from backup_tasks.stages.encrypt import DecryptingReader
from backup_tasks.stages.readahead import ReadaheadHashingReader
from backup_tasks.stages.reencrypt_pipe import DecryptingChild

log = logging.getLogger(__name__)


@dataclass
class Located:
    doc: dict
    tier: str
    key: str
    notes: list[str] = field(default_factory=list)


def locate(rt: Runtime, row: BackupRow) -> Located:
    """The first location whose manifest reads and verifies; later ones are fallbacks, noted."""
    if row.status in (Status.RUNNING, Status.DELETED):
        raise InputError(f"backup {row.id} is {row.status}; there is nothing stored to read", "pick another id from backupctl list")
    notes: list[str] = []
    last: Exception | None = None
    for loc in row.locations:
        try:
            storage = rt.storage(loc.tier)
            with storage.get(manifest.manifest_key(row.target, row.id)) as fh:
                doc = manifest.parse(fh.read(), backup_id=row.id)
            manifest.check_signature(doc, rt.verifier, backup_id=row.id)
            # The artifact must be there too, whole: a location whose object is gone or
            # truncated is skipped here, so restore falls back to the next one. Its key comes
            # from the manifest, the commit marker: a re-encryption commits a new object by
            # writing a new manifest revision, a moment before the catalog hears of it.
            key = object_key(doc)
            stored = storage.stat(key)
            if stored.size != doc["stored"]["size"]:
                raise VerificationFailed(
                    f"backup {row.id}: tier '{loc.tier}' holds {stored.size} bytes, the manifest says {doc['stored']['size']}",
                    "the stored object was truncated or replaced; restore from another location or re-run the backup",
                    check="stored-size")
            return Located(doc=doc, tier=loc.tier, key=key, notes=notes)
        except (ObjectNotFound, StorageError, TransientError, VerificationFailed) as exc:
            notes.append(f"tier '{loc.tier}' skipped: {exc}")
            log.warning("backup %s: location %s unusable: %s", row.id, loc.tier, exc)
            last = exc
    if isinstance(last, VerificationFailed):
        raise last
    raise StorageError(
        f"backup {row.id}: no location could be read ({'; '.join(notes) or 'no locations recorded'})",
        "check the tiers with backupctl targets, or rebuild the catalog from storage",
    )


def object_key(doc: dict) -> str:
    """Where the object a manifest describes is stored, on every tier that holds the manifest."""
    return f"{manifest.prefix(doc['target'], doc['backup_id'])}/{doc['stored']['name']}"


@contextlib.contextmanager
def plaintext(rt: Runtime, found: Located) -> Iterator[tuple[BinaryIO, HashingReader, ReadaheadHashingReader]]:
    """Yield (plaintext stream, stored-bytes hasher, plaintext hasher) for one location.

    Decompression and the plaintext sha256 run in threads of their own, beside the
    consumer. On exit those threads have ended and the stored object has been read to
    its end, so the stored hasher covers all of it even when the consumer stopped early
    (e.g. a check failed half-way).
    """
    doc = found.doc
    identities = None
    if doc.get("encryption"):
        identities = keys.identities_for(rt.settings.identities_file, doc["encryption"]["recipients"])
    with rt.storage(found.tier).get(found.key) as raw:
        stored = HashingReader(raw)
        decrypted = _decrypting(stored, identities, doc) if identities else None
        plain = decompressed = None
        try:
            decompressed = decompressing_reader(decrypted or stored, doc["compression"]["method"])
            plain = ReadaheadHashingReader(decompressed)
            yield plain, stored, plain
        except zstandard.ZstdError as exc:
            raise VerificationFailed(
                f"backup {doc['backup_id']}: decompression failed ({exc})",
                "the stored object is damaged; use another location or backup",
                check="decompress",
            ) from None
        finally:
            if plain is not None:
                plain.close()  # before the drain below: its thread reads the same stream
            if decompressed is not None and decompressed is not (decrypted or stored):
                decompressed.close()  # its decompressing threads, when the consumer stopped early
            if decrypted is not None:
                decrypted.close()
            stored.drain()


def _decrypting(stored: HashingReader, identities, doc: dict) -> BinaryIO:
    """The stored object decrypted: a large one in a process of its own (pyrage holds the GIL
    while it works), a small one in a thread, where a child's start-up would cost more."""
    what = f"backup {doc['backup_id']}"
    if doc["stored"]["size"] >= defaults.DECRYPT_IN_CHILD_FROM_BYTES:
        try:
            return DecryptingChild(stored, identities, what=what)
        except OSError as exc:  # no process to be had: the thread is slower, not wrong
            log.warning("%s: decrypting in a thread, a child process could not start (%s)", what, exc)
    return DecryptingReader(stored, identities, what=what)


def check_digests(doc: dict, stored: HashingReader, plain: HashingReader | ReadaheadHashingReader | None) -> None:
    """Compare what streamed with the signed manifest; the stored object's hash is checked first."""
    if stored.sha256 != doc["stored"]["sha256"] or stored.size != doc["stored"]["size"]:
        raise VerificationFailed(
            f"backup {doc['backup_id']}: stored object sha256 {stored.sha256[:16]}… ({stored.size} bytes) does not match "
            f"the signed manifest's {doc['stored']['sha256'][:16]}… ({doc['stored']['size']} bytes)",
            "the artifact was altered or replaced after it was written; restore from another location or backup",
            check="stored-sha256",
        )
    if plain is not None and (plain.sha256 != doc["plaintext"]["sha256"] or plain.size != doc["plaintext"]["size"]):
        raise VerificationFailed(
            f"backup {doc['backup_id']}: plaintext sha256 does not match the manifest",
            "the artifact does not decode to what was backed up; use another backup",
            check="plaintext-sha256",
        )
