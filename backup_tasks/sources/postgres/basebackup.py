"""The physical side: a whole cluster through ``pg_basebackup -D - -Ft -X none``, streamed into the chain as it is read.

Why one tar on stdout. The chain's stages follow the growing file of the stage before,
so compression can only start once the dump writes. pg_basebackup cannot stream WAL
beside a tar written to stdout, and with ``-X stream`` it wrote three files into a
work directory that could only be archived once it had finished: the chain waited for
the whole base backup, then copied it again (5× pg_basebackup alone for a 1.2 GB
cluster). With ``-X none`` its one tar goes straight into the dump stage's file, and
PostgreSQL 13+ appends its ``backup_manifest`` to that tar. Following base.tar as it
grew while keeping ``-X stream`` would have needed an outer layout without sizes up
front, a second pass over the cluster on disk and staging space for it, for no gain:
either way the chain is bound by compression (benchmarks/README.md has the figures).

Why no WAL in the base is safe. A physical target archives every segment through
``backupctl wal push``, and with ``-X none`` and ``archive_mode = on`` the server ends
the backup only once the stop segment has been archived (pg_basebackup prints
"waiting for required WAL segments to be archived"): when this returns, the WAL from
the start to the stop LSN is durable in the spool, and a base counts as restorable only
once that range is stored (ops/postgres_pitr/window.py). A restore, even to the very end of the base,
fetches it through ``restore_command``. The cost: if archiving is broken the backup
waits (PostgreSQL warns every minute) until the stage's time limit, but a base
without its WAL archived could not be restored anyway.

Why SHA-256 manifest checksums. PostgreSQL's own ``backup_manifest`` then carries a
SHA-256 per file, and verification (base_check.py) streams the tar against it: every
file of the cluster is proven, not only the archive's outer hash.
"""

from __future__ import annotations

import json
import struct
import time
from datetime import datetime, timezone
from typing import BinaryIO

from backup_tasks.errors import SourceError
from backup_tasks.sources.db import dsn, pipes
from backup_tasks.sources.postgres import base_layout, tar_picker, walnames
from backup_tasks.sources.postgres.client import classify, tool, tool_version
from backup_tasks.sources.postgres.tar_reader import TarError

LABEL = "backup_label"
CONTROL = "global/pg_control"
#: the members the dump reads on their way past, and the most bytes each may hold
WANTED = {LABEL: 1 << 16, "PG_VERSION": 64, CONTROL: 8192, base_layout.MANIFEST: 1 << 30}
#: where PostgreSQL 13-16 keep the WAL segment size in pg_control (checked against backup_label before use)
_SEG_SIZE_OFFSET = 228


def _iso(ts: datetime) -> str:
    return ts.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def dump(target, out: BinaryIO, workdir, *, bin_dir: str | None = None) -> dict:
    """Base-back-up ``target``'s cluster into ``out`` as it is read; the manifest's ``source`` section."""
    server = dsn.for_target(target)
    what = f"base backup of target '{target.name}'"
    pg_basebackup = tool("pg_basebackup", bin_dir)
    client_text = tool_version(pg_basebackup, dsn.child_env(server))
    started, t0 = datetime.now(timezone.utc), time.monotonic()
    argv = [pg_basebackup, "-D", "-", "-Ft", "-X", "none", "-c", "fast", "--no-password", "--verbose",
            "--manifest-checksums=SHA256", "--label", f"backup-tasks {target.name}"]
    picker = tar_picker.Picker(WANTED)
    with dsn.pg_env(server) as env:
        try:
            done = pipes.read_from(argv, out, env=env, what=what, on_chunk=picker.feed)
        except TarError as exc:  # pg_basebackup was stopped; nothing of this run is sealed
            raise SourceError(f"{what}: pg_basebackup's output is not the tar expected: {exc}",
                              "check that options.bin_dir points at PostgreSQL's own pg_basebackup") from None
    if done.returncode != 0:
        if "single tablespace" in done.stderr:
            raise SourceError(f"{what}: the cluster has tablespaces outside its data directory",
                              "physical backups of clusters with extra tablespaces are not supported; use mode = \"logical\"")
        raise classify(done.stderr, server, what=what, ref=target.password)
    ended = datetime.now(timezone.utc)
    missing = [name for name in WANTED if name not in picker.picked]
    if missing or not picker.ended:
        raise SourceError(f"{what}: pg_basebackup's tar lacks {', '.join(missing) or 'its end'}",
                          "use pg_basebackup 13 or newer (options.bin_dir), which appends backup_manifest to a tar on stdout")
    manifest = json.loads(picker.picked[base_layout.MANIFEST])
    ranges = manifest.get("WAL-Ranges") or []
    if len(ranges) != 1:
        raise SourceError(f"{what}: backup_manifest lists {len(ranges)} WAL ranges, expected one",
                          "the base backup crossed a timeline switch (a promotion during the backup); run it again")
    wal_range = ranges[0]
    control = picker.picked[CONTROL]
    pg_version = picker.picked["PG_VERSION"].decode().strip()
    start_lsn, stop_lsn = walnames.parse_lsn(wal_range["Start-LSN"]), walnames.parse_lsn(wal_range["End-LSN"])
    timeline = int(wal_range["Timeline"])
    segment_size = _segment_size(control, picker.picked[LABEL], timeline, start_lsn, what)
    return {
        "mode": "physical",
        "server": server.address,
        "server_version": pg_version,
        "system_identifier": str(int.from_bytes(control[:8], "little")),
        "timeline": timeline,
        "start_lsn": walnames.format_lsn(start_lsn),
        "stop_lsn": walnames.format_lsn(stop_lsn),
        "start_segment": walnames.segment_name(timeline, walnames.segno_of_lsn(start_lsn, segment_size), segment_size),
        "stop_segment": walnames.segment_name(timeline, walnames.segno_of_lsn(stop_lsn, segment_size), segment_size),
        "wal_segment_size": segment_size,
        "started_at": _iso(started),
        # pg_basebackup has returned: every commit before this instant is in the base or after its stop LSN
        "end_time": _iso(ended),
        # pg_basebackup's whole run, which the dump stage is: the chain copies and hashes while it runs
        "dump_seconds": {"pg_basebackup": round(time.monotonic() - t0, 3)},
        "cluster_files": len(manifest.get("Files", [])),
        "format": base_layout.SINGLE,
        "tables": {},
        "warnings": [ln for ln in done.stderr.splitlines() if "WARNING" in ln][:20],
        "tool_versions": {"pg_basebackup": client_text.split("(PostgreSQL)")[-1].strip(), "postgresql_server": pg_version},
    }


def _segment_size(control: bytes, label: bytes, timeline: int, start_lsn: int, what: str) -> int:
    """The cluster's WAL segment size: pg_control's, trusted only if it names the start segment backup_label names.

    Without WAL in the base there is no segment to measure, and the size decides every
    segment name the restorable window is computed from, so a wrong guess must fail here.
    """
    size = struct.unpack_from("<I", control, _SEG_SIZE_OFFSET)[0] if len(control) >= _SEG_SIZE_OFFSET + 4 else 0
    text = label.decode("utf-8", "replace")
    named = text.split("(file ", 1)[1][:24] if "(file " in text else ""
    valid = size and size & (size - 1) == 0 and (1 << 20) <= size <= (1 << 30)
    if not valid or walnames.segment_name(timeline, walnames.segno_of_lsn(start_lsn, size), size) != named:
        raise SourceError(f"{what}: cannot tell the cluster's WAL segment size (pg_control says {size}, "
                          f"backup_label names start segment {named or '?'})",
                          "this PostgreSQL version's pg_control layout is not known; report it with the server's version")
    return size
