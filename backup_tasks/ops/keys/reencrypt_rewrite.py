"""Re-encryption's rewrite: the new revision's object and listing, streamed from the old ones, on every tier.

Steps 1-2 of a re-encryption (ops/keys/reencrypt.py tells the whole order and why a kill at
any point is harmless): the stored object is decrypted and encrypted to the current
recipients on its way from the old name to a new one (``<name>.r<revision>.age``), its
old bytes checked against the signed manifest on the way in, then copied to the other
tiers, each copy checked by sha256. Kept apart from the commit and cleanup steps because
this is the part that streams the bytes; it returns the new revision's fields unsigned,
and nothing is committed here.
"""

from __future__ import annotations

import hashlib
import logging
import re

from backup_tasks import timefmt
from backup_tasks.defaults import REENCRYPT_PROCESSES_MIN_BYTES
from backup_tasks.errors import BackupError, VerificationFailed
from backup_tasks.ops.runtime import Runtime
from backup_tasks.records import attachments, keys, manifest
from backup_tasks.records.catalog import BackupRow
from backup_tasks.stages.counting import CountingReader
from backup_tasks.stages.digest import HashingReader
from backup_tasks.stages.encrypt import SUFFIX, DecryptingReader, EncryptingReader
from backup_tasks.stages.reencrypt_pipe import Digest, ReencryptingReader

log = logging.getLogger(__name__)

#: the progress stage a re-encryption reports its bytes under
STAGE = "reencrypt"


def revision(doc: dict) -> int:
    """A manifest's revision: 1 for the one the backup wrote, one more for each re-encryption."""
    return int(doc.get("revision") or 1)


def key_ids(doc: dict) -> list[str]:
    return list((doc.get("encryption") or {}).get("recipients") or [])


def revision_name(name: str, rev: int) -> str:
    """``data.sqlite.zst.age`` → ``data.sqlite.zst.r2.age``: a new key per revision, so old and new coexist."""
    stem = name[: -len(SUFFIX)] if name.endswith(SUFFIX) else name
    return f"{re.sub(r'[.]r[0-9]+$', '', stem)}.r{rev}{SUFFIX}"


def rewrite(rt: Runtime, row: BackupRow, doc: dict, current: list[str], progress) -> tuple[dict, Digest]:
    """Steps 1-2: the new object on every tier. Returns the new revision's fields and the plaintext's (size, sha256).

    The plaintext digest is of the bytes between decryption and encryption: the read-back
    that follows proves the new object decrypts to exactly those.
    """
    prefix = manifest.prefix(row.target, row.id)
    rev = revision(doc) + 1
    name = revision_name(doc["stored"]["name"], rev)
    new_key, old_key = f"{prefix}/{name}", f"{prefix}/{doc['stored']['name']}"
    old_identities = keys.identities_for(rt.settings.identities_file, key_ids(doc))
    keys.identities_for(rt.settings.identities_file, current)  # the new object must be verifiable before it is trusted
    tiers = [loc["tier"] for loc in doc["locations"]]
    source = rt.storage(tiers[0])
    size = doc["stored"]["size"]
    if progress:
        progress(STAGE, 0, size)
    with source.get(old_key) as raw:
        if size >= REENCRYPT_PROCESSES_MIN_BYTES:  # decrypt and encrypt each on a core of its own, hashing there too
            piped = ReencryptingReader(raw, old_identities, rt.recipients, what=f"backup {row.id}", digests=True)
            streams, out = [piped], piped
        else:  # a small object: two threads, sparing the start of two processes; hashed here
            old = HashingReader(raw)
            decrypted = DecryptingReader(old, old_identities, what=f"backup {row.id}")
            plain = HashingReader(decrypted)
            encrypted = EncryptingReader(plain, rt.recipients)
            streams, out = [encrypted, decrypted], encrypted
        # Progress counts the new bytes as they reach the tier (about as many as the old ones):
        # a child may be reading the old object straight from the disk, out of this process's sight.
        new = CountingReader(out, (lambda n: progress(STAGE, min(n, size), size)) if progress else _ignore)
        try:
            info = source.put(new_key, new, size_hint=size)
        finally:
            for stream in streams:
                stream.close()
        if size >= REENCRYPT_PROCESSES_MIN_BYTES:
            source_digest, plain_digest = piped.source_digest, piped.plain_digest
        else:
            old.drain()
            source_digest, plain_digest = (old.size, old.sha256), (plain.size, plain.sha256)
    if source_digest != (doc["stored"]["size"], doc["stored"]["sha256"]):
        delete_quietly(rt, tiers[0], new_key)
        raise VerificationFailed(f"backup {row.id}: the stored object on tier '{tiers[0]}' does not match its signed manifest",
                                 "it was not re-encrypted; verify it (backupctl verify ID) and restore from another copy",
                                 check="stored-sha256")
    # The tier hashed the new object while it passed (every put does): hashing it here too would be a
    # second pass over the same bytes in the same thread, on the path that bounds re-encryption speed.
    new_sha256 = info.sha256
    if info.size != new.count or not new_sha256:
        raise VerificationFailed(f"backup {row.id}: tier '{tiers[0]}' stored {info.size} bytes of the re-encrypted {new.count}",
                                 "check the tier's health and run backupctl reencrypt again", check="stored-size")
    etags = {tiers[0]: info.etag}
    for tier in tiers[1:]:
        etags[tier] = copy_object(rt, tiers[0], tier, new_key, new_sha256)
    fields = {k: v for k, v in doc.items() if k not in ("format", "backup_id", "signature")}
    fields.update(
        revision=rev,
        replaces={"revision": revision(doc), "manifest_sha256": hashlib.sha256(manifest.dumps(doc)).hexdigest(),
                  "signed_by": (doc.get("signature") or {}).get("key_id"), "key_ids": key_ids(doc), "stored": doc["stored"],
                  **({"listing": doc["listing"]} if doc.get("listing") else {})},
        reencrypted_at=timefmt.iso(timefmt.now()),
        encryption={"method": "age", "recipients": current},
        stored={"name": name, "size": new.count, "sha256": new_sha256},
        locations=[{"tier": t, "key": new_key, **({"etag": etags[t]} if etags.get(t) else {})} for t in tiers],
    )
    if doc.get("attachments"):
        fields["attachments"] = {n: attachments.seal(attachments.unseal(doc, n, old_identities), rt.recipients)
                                 for n in sorted(doc["attachments"])}
    if (doc.get("listing") or {}).get("encrypted"):
        fields["listing"] = _rewrite_listing(rt, row, doc, rev, tiers, old_identities)
    return {"format": manifest.FORMAT, "backup_id": row.id, **fields}, plain_digest


def _rewrite_listing(rt: Runtime, row: BackupRow, doc: dict, rev: int, tiers: list[str], old_identities) -> dict:
    """A files backup's tree listing moves to the new key with its artifact: it names every path, so it is encrypted too.

    Written under a new name like the artifact, so the old revision stays whole until the
    new one is committed; its plaintext (and so the plaintext sha256 the host cache checks)
    does not change.
    """
    prefix = manifest.prefix(row.target, row.id)
    info = doc["listing"]
    name = revision_name(info["name"], rev)
    with rt.storage(tiers[0]).get(f"{prefix}/{info['name']}") as raw:
        old = HashingReader(raw)
        decrypted = DecryptingReader(old, old_identities, what=f"listing of backup {row.id}")
        encrypted = EncryptingReader(decrypted, rt.recipients)
        new = CountingReader(encrypted, _ignore)
        try:
            stored = rt.storage(tiers[0]).put(f"{prefix}/{name}", new)
        finally:
            encrypted.close()
            decrypted.close()
        old.drain()
    if old.sha256 != info["sha256"]:
        delete_quietly(rt, tiers[0], f"{prefix}/{name}")
        raise VerificationFailed(f"backup {row.id}: the stored tree listing on tier '{tiers[0]}' does not match its signed manifest",
                                 "it was not re-encrypted; verify it (backupctl verify ID) and restore from another copy",
                                 check="listing-sha256")
    for tier in tiers[1:]:
        copy_object(rt, tiers[0], tier, f"{prefix}/{name}", stored.sha256)
    return {**info, "name": name, "size": new.count, "sha256": stored.sha256}


def copy_object(rt: Runtime, src: str, dst: str, key: str, sha256: str) -> str | None:
    """Copy ``key`` from tier ``src`` to ``dst``, checked against ``sha256``; return the ETag ``dst`` reported."""
    with rt.storage(src).get(key) as fh:
        reader = HashingReader(fh)
        info = rt.storage(dst).put(key, reader)
    if reader.sha256 != sha256:
        delete_quietly(rt, dst, key)
        raise VerificationFailed(f"copy of {key} from tier '{src}' does not match the re-encrypted object",
                                 "the source tier returned other bytes; check it and run backupctl reencrypt again",
                                 check="stored-sha256")
    return info.etag


def _ignore(count: int) -> None:
    """A CountingReader's callback when only its final count matters."""


def delete_quietly(rt: Runtime, tier: str, key: str) -> None:
    try:
        rt.storage(tier).delete(key)
    except BackupError as exc:
        log.warning("could not remove %s from tier %s: %s", key, tier, exc)
