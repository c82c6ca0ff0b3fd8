"""A files backup's tree listing as an object: sealed and stored beside the artifact, fetched and proven, cached.

Every files and config backup stores its tree listing (sources/files/tree_listing.py)
next to its artifact: ``listing.jsonl.zst``, age-encrypted like the artifact when the
settings have recipients (``.age`` added). The signed manifest carries its name, size
and sha256 under ``listing`` (and the plaintext's, for the host cache), so fetching it
proves it is the one written.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from backup_tasks.errors import InputError, ObjectNotFound, VerificationFailed
from backup_tasks.ops import readback
from backup_tasks.ops.runtime import Runtime
from backup_tasks.records import keys, manifest
from backup_tasks.records.catalog import Status
from backup_tasks.sources.files.listing import has_listing_inside
from backup_tasks.sources.files.tree_listing import NAME as LISTING_NAME, read_listing
from backup_tasks.stages import encrypt as encrypt_stage
from backup_tasks.stages.digest import HashingReader, file_digest

log = logging.getLogger(__name__)


def _cache_dir(rt: Runtime, target: str) -> Path:
    # Hidden, so staging cleanup never takes it for a dead run's directory.
    return Path(rt.settings.staging_dir) / ".listings" / target


def parent_listing(rt: Runtime, target: str, parent_id: str, dest: Path) -> None:
    """The parent's plaintext listing at ``dest``: from this host's cache if it matches the signed sha256, else from storage."""
    row = rt.catalog.get(parent_id)
    doc = readback.locate(rt, row)
    cached = _cache_dir(rt, target) / f"{parent_id}.jsonl.zst"
    want = doc.doc["listing"].get("plaintext_sha256")
    if cached.exists() and want and file_digest(cached)[1] == want:
        shutil.copyfile(cached, dest)
        return
    fetch_listing(rt, doc.doc, doc.tier, dest)


def cache_listing(rt: Runtime, target: str, backup_id: str, plain: Path) -> None:
    """Keep this host's copy of a committed backup's listing for the next incremental (0600, 0700 dir).

    The host already reads every file of the tree, so a plaintext listing here reveals
    nothing new; it spares the backup host the decryption identity that restore hosts
    hold. Listings of backups that are gone from the catalog are pruned. Best effort: the
    backup is committed already, and without the cache the next run reads the stored one.
    """
    folder = _cache_dir(rt, target)
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = folder / f".{backup_id}.tmp"
        shutil.copyfile(plain, tmp)
        os.chmod(tmp, 0o600)
        os.replace(tmp, folder / f"{backup_id}.jsonl.zst")
        live = {r.id for r in rt.catalog.list(target=target) if r.status not in (Status.DELETED, Status.FAILED)}
        for old in folder.glob("*.jsonl.zst"):
            if old.name[: -len(".jsonl.zst")] not in live:
                old.unlink(missing_ok=True)
    except OSError as exc:
        log.warning("backup %s: listing not cached in %s (%s); the next incremental reads it from storage",
                    backup_id, folder, exc)


def listing_key(doc: dict) -> str:
    return f"{manifest.prefix(doc['target'], doc['backup_id'])}/{doc['listing']['name']}"


def seal_listing(rt: Runtime, run_dir: Path, encrypted: bool) -> dict | None:
    """The listing as it will be stored (encrypted if the artifact is); None if the dump wrote none.

    Idempotent: a redelivered upload finds the sealed file and its record.
    """
    plain = run_dir / LISTING_NAME
    name = LISTING_NAME + (encrypt_stage.SUFFIX if encrypted else "")
    sealed = run_dir / f"stored-{name}"
    if not sealed.exists():
        if not plain.exists():
            return None
        tmp = sealed.with_name(f".{sealed.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as raw, open(plain, "rb") as src:
            if encrypted:
                encrypt_stage.encrypt(src, raw, rt.recipients)
            else:
                shutil.copyfileobj(src, raw)
        os.replace(tmp, sealed)
    return {"name": name, "path": str(sealed), **_digest(sealed, "size", "sha256"), "encrypted": encrypted,
            **_digest(plain, "plaintext_size", "plaintext_sha256")}


def _digest(path: Path, size_key: str, sha_key: str) -> dict:
    size, sha256 = file_digest(path)
    return {size_key: size, sha_key: sha256}


def fetch_listing(rt: Runtime, doc: dict, tier: str, dest: Path) -> Path:
    """Download, check against the signed manifest, and decrypt a backup's listing to ``dest`` (0600)."""
    info = doc.get("listing")
    if not info:
        raise InputError(f"backup {doc['backup_id']} has no tree listing (taken before listings were stored)",
                         "restore it whole without --path, or take a new full backup")
    storage = rt.storage(tier)
    try:
        storage.stat(listing_key(doc))
    except ObjectNotFound:
        raise VerificationFailed(
            f"backup {doc['backup_id']}: its tree listing {listing_key(doc)} is missing on tier '{tier}'",
            "the backup cannot be restored from this tier without it; restore from another copy or take a new full backup",
            check="listing") from None
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out, storage.get(listing_key(doc)) as raw:
        stored = HashingReader(raw)
        if info.get("encrypted"):
            identities = keys.identities_for(rt.settings.identities_file, doc["encryption"]["recipients"])
            reader = encrypt_stage.DecryptingReader(stored, identities, what=f"listing of backup {doc['backup_id']}")
            try:
                shutil.copyfileobj(reader, out)
            finally:
                reader.close()
        else:
            shutil.copyfileobj(stored, out)
        stored.drain()
    if stored.sha256 != info["sha256"] or stored.size != info["size"]:
        raise VerificationFailed(
            f"backup {doc['backup_id']}: the stored tree listing does not match the signed manifest's sha256",
            "the listing was altered or truncated; restore from another location or backup", check="listing-sha256")
    return dest


@contextlib.contextmanager
def archive_listing(rt: Runtime, found: readback.Located) -> Iterator[Path | None]:
    """The listing a files backup's archive is compared with as it restores, fetched and proven; removed after.

    None for a backup that needs none: not a files backup, or one whose manifest still
    carries the archive's file list.
    """
    doc = found.doc
    if not doc.get("listing") or has_listing_inside(doc):
        yield None
        return
    workdir = Path(tempfile.mkdtemp(prefix=f"listing-{doc['backup_id']}-", dir=rt.staging_root()))
    try:
        yield fetch_listing(rt, doc, found.tier, workdir / LISTING_NAME)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def file_list(rt: Runtime, found: readback.Located) -> list[dict] | None:
    """What ``show --files`` lists: the tree listing's entries, or for a backup stored before
    listings existed the archive's file list inside its manifest; None for other kinds."""
    doc = found.doc
    if not doc.get("listing"):
        return (doc.get("source") or {}).get("files")
    workdir = Path(tempfile.mkdtemp(prefix=f"listing-{doc['backup_id']}-", dir=rt.staging_root()))
    try:
        return list(read_listing(fetch_listing(rt, doc, found.tier, workdir / LISTING_NAME)))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
