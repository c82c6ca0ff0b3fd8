"""The physical side: a whole cluster through ``pg_basebackup -Ft -X stream``, and the proof that a stored one is whole.

Why an outer tar. pg_basebackup cannot write a tar to stdout while it streams WAL
beside the base, so it writes its three files (``backup_manifest``, ``base.tar``,
``pg_wal.tar``) into the run's private work directory and they are then streamed, in
that order, as one pax tar. In a disaster ``age -d | zstd -d | tar -x`` gives back
exactly what pg_basebackup wrote, readable without our code.

Why SHA-256 manifest checksums. PostgreSQL's own ``backup_manifest`` then carries a
SHA-256 per file, and verification streams ``base.tar`` against it: every file of the
cluster is proven, not only the archive's outer hash.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import tarfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import BinaryIO

from backup_tasks import defaults
from backup_tasks.errors import SourceError, VerificationFailed
from backup_tasks.sources.db import dsn
from backup_tasks.sources.postgres import outer_tar, tar_reader, walnames
from backup_tasks.sources.postgres.client import classify, tool, tool_version

MANIFEST = "backup_manifest"
BASE = "base.tar"
WAL = "pg_wal.tar"
MEMBERS = (MANIFEST, BASE, WAL)
FORMAT = "tar of backup_manifest, base.tar, pg_wal.tar (pg_basebackup -Ft -X stream)"


def _iso(ts: datetime) -> str:
    return ts.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def dump(target, out: BinaryIO, workdir: Path, *, bin_dir: str | None = None) -> dict:
    """Base-back-up ``target``'s cluster into ``out``; the manifest's ``source`` section."""
    server = dsn.for_target(target)
    what = f"base backup of target '{target.name}'"
    pg_basebackup = tool("pg_basebackup", bin_dir)
    client_text = tool_version(pg_basebackup, dsn.child_env(server))
    into = workdir / "pg_basebackup"
    started = datetime.now(timezone.utc)
    argv = [pg_basebackup, "-D", str(into), "-Ft", "-X", "stream", "-c", "fast", "--no-password", "--verbose",
            "--manifest-checksums=SHA256", "--label", f"backup-tasks {target.name}"]
    with dsn.pg_env(server) as env:
        done = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise classify(done.stderr, server, what=what, ref=target.password)
    ended = datetime.now(timezone.utc)
    extra = sorted(p.name for p in into.iterdir() if p.name not in MEMBERS)
    if extra:
        raise SourceError(f"{what}: the cluster has tablespaces outside its data directory ({', '.join(extra)})",
                          "physical backups of clusters with extra tablespaces are not supported; use mode = \"logical\"")
    manifest = json.loads((into / MANIFEST).read_text())
    ranges = manifest.get("WAL-Ranges") or []
    if len(ranges) != 1:
        raise SourceError(f"{what}: backup_manifest lists {len(ranges)} WAL ranges, expected one",
                          "the base backup crossed a timeline switch (a promotion during the backup); run it again")
    wal_range = ranges[0]
    with tarfile.open(into / BASE) as base:
        control = base.extractfile("global/pg_control").read(8)
        pg_version = base.extractfile("PG_VERSION").read().decode().strip()
    with tarfile.open(into / WAL) as wal:
        sizes = [m.size for m in wal.getmembers() if m.isfile() and walnames.kind_of(Path(m.name).name) == "segment"]
    segment_size = sizes[0] if sizes else walnames.DEFAULT_SEGMENT_SIZE
    archived = time.monotonic()
    outer_tar.write(out, [(name, into / name) for name in MEMBERS])
    archived = time.monotonic() - archived
    start_lsn, stop_lsn = walnames.parse_lsn(wal_range["Start-LSN"]), walnames.parse_lsn(wal_range["End-LSN"])
    timeline = int(wal_range["Timeline"])
    return {
        "mode": "physical",
        "server": server.address,
        "server_version": pg_version,
        "system_identifier": str(int.from_bytes(control, "little")),
        "timeline": timeline,
        "start_lsn": walnames.format_lsn(start_lsn),
        "stop_lsn": walnames.format_lsn(stop_lsn),
        "start_segment": walnames.segment_name(timeline, walnames.segno_of_lsn(start_lsn, segment_size), segment_size),
        "stop_segment": walnames.segment_name(timeline, walnames.segno_of_lsn(stop_lsn, segment_size), segment_size),
        "wal_segment_size": segment_size,
        "started_at": _iso(started),
        # pg_basebackup has returned: every commit before this instant is in the base or after its stop LSN
        "end_time": _iso(ended),
        # where the dump stage's time goes: pg_basebackup into the work directory, then the one tar the chain reads
        "dump_seconds": {"pg_basebackup": round((ended - started).total_seconds(), 3), "archive": round(archived, 3)},
        "cluster_files": len(manifest.get("Files", [])),
        "format": FORMAT,
        "tables": {},
        "warnings": [ln for ln in done.stderr.splitlines() if "WARNING" in ln][:20],
        "tool_versions": {"pg_basebackup": client_text.split("(PostgreSQL)")[-1].strip(), "postgresql_server": pg_version},
    }


def _fail(message: str, check: str) -> VerificationFailed:
    return VerificationFailed(message, "the stored base backup is damaged or incomplete; take a new one and restore from another",
                              check=check)


def check(plaintext: BinaryIO, manifest: dict, workdir: Path) -> dict:
    """Stream the outer tar: every file of base.tar against PostgreSQL's SHA-256 manifest, and the WAL to the stop point."""
    report = manifest["source"]
    seen: list[str] = []
    files: dict[str, dict] = {}
    checked = 0
    wal_names: set[str] = set()
    label = b""
    try:
        for member, stream in tar_reader.members(plaintext):
            seen.append(member.name)
            if member.name == MANIFEST:
                files = {f["Path"]: f for f in json.loads(stream.read()).get("Files", [])}
            elif member.name == BASE:
                if not files:
                    raise _fail("base.tar comes before backup_manifest in the stored archive", "physical-layout")
                checked, label = _check_base(stream, files)
            elif member.name == WAL:
                wal_names.update(Path(m.name).name for m, _ in tar_reader.members(stream) if m.isfile())
    except tar_reader.TarError as exc:
        raise _fail(f"the stored archive is not a readable tar: {exc}", "physical-layout") from None
    if seen != list(MEMBERS):
        raise _fail(f"the stored archive holds {seen}, expected {list(MEMBERS)}", "physical-layout")
    start = f"START WAL LOCATION: {report['start_lsn']} "
    if start.encode() not in label:
        raise _fail(f"backup_label does not start at {report['start_lsn']} as the manifest says", "backup-label")
    segsize = report.get("wal_segment_size", walnames.DEFAULT_SEGMENT_SIZE)
    first = walnames.segno_of_lsn(walnames.parse_lsn(report["start_lsn"]), segsize)
    last = walnames.segno_of_lsn(walnames.parse_lsn(report["stop_lsn"]), segsize)
    needed = [walnames.segment_name(report["timeline"], n, segsize) for n in range(first, last + 1)]
    missing = [n for n in needed if n not in wal_names]
    if missing:
        raise _fail(f"pg_wal.tar lacks the WAL the base needs to be consistent: {', '.join(missing)}", "base-wal")
    return {"files_checked": checked, "wal_segments_in_base": len(needed)}


def _check_base(stream: BinaryIO, files: dict[str, dict]) -> tuple[int, bytes]:
    checked, label = 0, b""
    for m, data in tar_reader.members(stream):
        if not m.isfile():
            continue
        digest, size = hashlib.sha256(), 0
        while chunk := data.read(defaults.CHUNK_SIZE):
            digest.update(chunk)
            size += len(chunk)
            if m.name == "backup_label":
                label += chunk
        entry = files.get(m.name)
        if entry is None:
            continue  # files PostgreSQL leaves out of its manifest (backup_label, tablespace_map)
        if entry.get("Checksum-Algorithm") == "SHA256" and digest.hexdigest() != entry["Checksum"]:
            raise _fail(f"{m.name} in base.tar does not match its SHA-256 in backup_manifest", "base-file-sha256")
        if size != entry["Size"]:
            raise _fail(f"{m.name} in base.tar holds {size} bytes, backup_manifest says {entry['Size']}", "base-file-size")
        checked += 1
        files[m.name] = {**entry, "_seen": True}
    unseen = [p for p, e in files.items() if not e.get("_seen")]
    if unseen:
        raise _fail(f"base.tar lacks {len(unseen)} file(s) backup_manifest lists, e.g. {unseen[0]}", "base-file-missing")
    return checked, label

