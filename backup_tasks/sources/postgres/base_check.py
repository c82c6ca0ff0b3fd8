"""Proving a stored base backup whole: every file against PostgreSQL's SHA-256 ``backup_manifest``, in either layout.

Both layouts (base_layout.py) are read as one stream. The data directory's files are
hashed as they pass and only their (size, digest) kept, then compared with the
manifest, because in the current layout the manifest comes last; a cluster's manifest
is itself one JSON object PostgreSQL wrote whole, so the memory is of the same order
as reading it. The backup_label must start at the LSN the signed manifest records. The
old layout also carried the WAL from start to stop in ``pg_wal.tar``, which is checked
as before; the current one relies on the archive for it, which the restorable window
already demands.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import BinaryIO

from backup_tasks import defaults
from backup_tasks.errors import VerificationFailed
from backup_tasks.sources.postgres import base_layout, tar_reader, walnames
from backup_tasks.sources.postgres.base_layout import BASE, MANIFEST, OUTER_MEMBERS, WAL

LABEL = "backup_label"


def _fail(message: str, check: str) -> VerificationFailed:
    return VerificationFailed(message, "the stored base backup is damaged or incomplete; take a new one and restore from another",
                              check=check)


def check(plaintext: BinaryIO, manifest: dict) -> dict:
    """Stream the stored tar and prove every file of the cluster; what was checked."""
    report = manifest["source"]
    try:
        if base_layout.layout_of(report) == base_layout.SINGLE:
            digests, listed = _digests(plaintext, keep_manifest=True)
            wal = {}
        else:
            digests, listed, wal = _outer(plaintext, report)
    except tar_reader.TarError as exc:
        raise _fail(f"the stored archive is not a readable tar: {exc}", "physical-layout") from None
    if listed is None:
        raise _fail("the stored archive holds no backup_manifest", "physical-layout")
    checked = _compare(digests, listed)
    label = digests.get(LABEL, (0, "", b""))[2]
    if f"START WAL LOCATION: {report['start_lsn']} ".encode() not in label:
        raise _fail(f"backup_label does not start at {report['start_lsn']} as the manifest says", "backup-label")
    return {"files_checked": checked, **wal}


def _outer(plaintext: BinaryIO, report: dict) -> tuple[dict, bytes | None, dict]:
    seen: list[str] = []
    digests: dict = {}
    listed = None
    wal_names: set[str] = set()
    for member, stream in tar_reader.members(plaintext):
        seen.append(member.name)
        if member.name == MANIFEST:
            listed = stream.read()
        elif member.name == BASE:
            digests, _ = _digests(stream, keep_manifest=False)
        elif member.name == WAL:
            wal_names.update(Path(m.name).name for m, _ in tar_reader.members(stream) if m.isfile())
    if seen != list(OUTER_MEMBERS):
        raise _fail(f"the stored archive holds {seen}, expected {list(OUTER_MEMBERS)}", "physical-layout")
    segsize = report.get("wal_segment_size", walnames.DEFAULT_SEGMENT_SIZE)
    first = walnames.segno_of_lsn(walnames.parse_lsn(report["start_lsn"]), segsize)
    last = walnames.segno_of_lsn(walnames.parse_lsn(report["stop_lsn"]), segsize)
    needed = [walnames.segment_name(report["timeline"], n, segsize) for n in range(first, last + 1)]
    missing = [n for n in needed if n not in wal_names]
    if missing:
        raise _fail(f"pg_wal.tar lacks the WAL the base needs to be consistent: {', '.join(missing)}", "base-wal")
    return digests, listed, {"wal_segments_in_base": len(needed)}


def _digests(stream: BinaryIO, *, keep_manifest: bool) -> tuple[dict[str, tuple], bytes | None]:
    """Per file of the data directory: (size, sha256, the bytes of backup_label only); and the manifest if it is a member."""
    digests: dict[str, tuple] = {}
    listed = None
    for m, data in tar_reader.members(stream):
        if not m.isfile():
            continue
        if keep_manifest and m.name == MANIFEST:
            listed = data.read()
            continue
        digest, size, label = hashlib.sha256(), 0, b""
        while chunk := data.read(defaults.CHUNK_SIZE):
            digest.update(chunk)
            size += len(chunk)
            if m.name == LABEL:
                label += chunk
        digests[m.name] = (size, digest.hexdigest(), label)
    return digests, listed


def _compare(digests: dict[str, tuple], listed: bytes) -> int:
    """Every file the manifest lists is in the archive, with its size and SHA-256; the number checked."""
    try:
        files = json.loads(listed).get("Files", [])
    except ValueError:
        raise _fail("backup_manifest is not JSON", "physical-layout") from None
    checked = 0
    for entry in files:
        path = entry["Path"]
        if path not in digests:
            raise _fail(f"the base lacks {path}, which backup_manifest lists", "base-file-missing")
        size, sha, _ = digests[path]
        if entry.get("Checksum-Algorithm") == "SHA256" and sha != entry["Checksum"]:
            raise _fail(f"{path} in the base does not match its SHA-256 in backup_manifest", "base-file-sha256")
        if size != entry["Size"]:
            raise _fail(f"{path} in the base holds {size} bytes, backup_manifest says {entry['Size']}", "base-file-size")
        checked += 1
    return checked
