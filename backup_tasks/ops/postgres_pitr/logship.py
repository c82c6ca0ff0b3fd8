"""Shipping a target's spool of archived logs: compress → encrypt → upload → record, then drop the spooled copy.

Log-family neutral: PostgreSQL's WAL (ops/postgres_pitr/wal.py) says what a file is through
``describe``; another log family brings its own. Each file goes through the same
stream stages as a backup, to every tier of the target, under
``_logs/<target>/<family>/<name>`` (a leading ``_`` never starts a target's name, so a
backup's prefix never holds a log and debris cleanup never sees one).

Crash safety: a file is recorded in the catalog only after every tier holds it whole,
and leaves the spool only after it is recorded. A shipping run that dies mid-upload
leaves the file spooled; the next run uploads it again (same key, so once) and records
it once. Two runs at once are kept apart by the spool's lock: the second does nothing.
"""

from __future__ import annotations

import logging
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable

from backup_tasks.errors import StorageError, TransientError
from backup_tasks.ops.postgres_pitr.logspool import Spool, Spooled
from backup_tasks.ops.runtime import Runtime
from backup_tasks.records import events, log_markers
from backup_tasks.records.keys import key_id
from backup_tasks.stages import compress as compress_stage
from backup_tasks.stages import encrypt as encrypt_stage
from backup_tasks.stages.digest import HashingReader, HashingWriter
from backup_tasks.timefmt import iso

log = logging.getLogger(__name__)

#: (kind, timeline, seq, detail) of a spooled file given its name and path, or None for a file this family does not ship
Describe = Callable[[str, Path], "tuple[str, int | None, int | None, dict | None] | None"]

PREFIX = "_logs"
#: how long the spool's ledger remembers a shipped file's sha256 (``wal push`` checks a re-push against it)
LEDGER_KEEP = timedelta(days=7)


def log_prefix(target: str, family: str) -> str:
    return f"{PREFIX}/{target}/{family}"


def spool_for(rt: Runtime, target: str) -> Spool:
    return Spool(rt.settings.spool_dir, target)


def ship(rt: Runtime, target_name: str, family: str, describe: Describe) -> dict:
    """Ship everything spooled for ``target_name``; alert on conflicts and on a spool over its limit."""
    target = rt.target(target_name)
    spool = spool_for(rt, target.name)
    shipped, already, skipped = [], [], []
    with spool.exclusive() as mine:
        if not mine:
            return {"target": target.name, "skipped": "another shipping run holds this spool"}
        try:
            for item in spool.ready():
                what = describe(item.name, item.path)
                if what is None:
                    skipped.append(item.name)
                    continue
                row = rt.catalog.find_log(target.name, family, item.name)
                sha = _plain_sha256(item)
                if row is not None and row.sha256_plain == sha:
                    spool.mark_shipped(item, sha)  # stored and recorded by a run that died before this step
                    already.append(item.name)
                    continue
                if row is not None:
                    spool.record_conflict(item.name, row.sha256_plain, sha)
                    continue
                _ship_one(rt, target, family, item, what)  # a failure stops the run: files go in their log's order
                shipped.append(item.name)
            # A server re-archives only recent files after a crash; for older names the catalog decides
            spool.forget_shipped(datetime.now(timezone.utc) - LEDGER_KEEP)
        finally:
            size, conflicts = _alert(rt, target, spool)
    return {"target": target.name, "shipped": shipped, "already_stored": already, "not_logs": skipped,
            "spool_bytes": size, "conflicts": [c["name"] for c in conflicts]}


def _alert(rt: Runtime, target, spool: Spool) -> tuple[int, list[dict]]:
    """Alert on every unresolved conflict and on a spool over its limit, even when this run failed (then most of all)."""
    size, conflicts = spool.size(), spool.conflicts()
    for conflict in conflicts:
        events.emit(rt.catalog, events.LOG_CONFLICT,
                    f"target '{target.name}': {conflict['name']} was offered again with other contents "
                    f"(sha256 {conflict['offered_sha256'][:16]}… against the archived {conflict['archived_sha256'][:16]}…); "
                    "archiving of this target is stopped", target=target.name, host=target.host,
                    remedy="stop the second server archiving into this target, then remove the entry under conflicts/ in the spool",
                    log=conflict["name"])
    if size > rt.settings.spool_max_bytes:
        events.emit(rt.catalog, events.SPOOL_FULL,
                    f"target '{target.name}': {size:,} bytes of logs wait in the spool {spool.dir}, over spool_max_bytes "
                    f"({rt.settings.spool_max_bytes:,}); nothing is dropped, but shipping is falling behind",
                    target=target.name, host=target.host, spool_bytes=size,
                    remedy="check that the shipping task runs and that the tiers accept uploads; give the spool more room")
    return size, conflicts


def _plain_sha256(item: Spooled) -> str:
    with open(item.path, "rb") as fh:
        reader = HashingReader(fh)
        reader.drain()
    return reader.sha256


def _ship_one(rt: Runtime, target, family: str, item: Spooled, what) -> None:
    kind, timeline, seq, detail = what
    settings = rt.settings
    method = settings.compression
    encrypted = bool(settings.recipients)
    suffix = compress_stage.SUFFIX[method] + (encrypt_stage.SUFFIX if encrypted else "")
    key = f"{log_prefix(target.name, family)}/{item.name}{suffix}"
    work = rt.staging_root() / f"_ship-{target.name}"
    work.mkdir(mode=0o700, exist_ok=True)
    staged = work / f"{item.name}{suffix}"
    plain = compressed = None
    try:
        fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as raw, open(item.path, "rb") as src:
            stored = HashingWriter(raw)
            plain = HashingReader(src)
            if encrypted:
                tmp = work / f"{item.name}.c"
                cfd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(cfd, "wb") as cout:
                    compress_stage.compress(plain, cout, method, level=settings.compression_level,
                                            threads=settings.compression_threads)
                compressed = tmp
                with open(tmp, "rb") as cin:
                    encrypt_stage.encrypt(cin, stored, rt.recipients)
            else:
                compress_stage.compress(plain, stored, method, level=settings.compression_level,
                                        threads=settings.compression_threads)
        tiers = []
        for tier in rt.config.tiers_of(target):
            storage = rt.storage(tier)
            with open(staged, "rb") as fh:
                info = storage.put(key, fh, size_hint=stored.size)
            if info.size != stored.size or (info.sha256 and info.sha256 != stored.sha256):
                storage.delete(key)
                raise StorageError(f"{item.name} of target '{target.name}' reached tier '{tier.name}' incomplete",
                                   "check the tier; the file stays in the spool and the next run ships it again")
            tiers.append(tier.name)
        record = dict(target=target.name, family=family, name=item.name, kind=kind, timeline=timeline, seq=seq,
                      size_plain=plain.size, sha256_plain=plain.sha256, size_stored=stored.size,
                      sha256_stored=stored.sha256, compression=method,
                      key_ids=[key_id(r) for r in settings.recipients] if encrypted else [],
                      closed_at=item.closed_at, uploaded_at=datetime.now(timezone.utc), detail=detail)
        # the signed record goes beside the object before the catalog learns of it: a lost catalog is rebuilt from it
        log_markers.write({**record, "closed_at": iso(item.closed_at), "uploaded_at": iso(record["uploaded_at"])},
                          object_key=key, tiers=tiers, signer=rt.signer, storage=rt.storage)
        rt.catalog.record_log(**record, key=key, tiers=tiers)
        Spool(settings.spool_dir, target.name).mark_shipped(item, plain.sha256)
    except (StorageError, TransientError) as exc:
        log.warning("shipping %s of target %s failed; it stays spooled: %s", item.name, target.name, exc)
        raise
    finally:
        staged.unlink(missing_ok=True)
        if compressed is not None:
            compressed.unlink(missing_ok=True)
