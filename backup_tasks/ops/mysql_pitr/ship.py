"""Shipping closed binary logs of a ``binlog = true`` target: rotate, copy, compress, encrypt, store, record.

Run every minute on the target's host queue. Each run rotates the server's binary log
(``FLUSH BINARY LOGS``), so what was committed up to then is in a closed file, and
ships every closed file the catalog does not hold yet, oldest first.

Idempotent. A file is stored under its name and the start of its sha256, then a signed
record beside it, then the catalog row: a run that dies half-way leaves no row, and
the next run ships the file again over the same keys, so it ends up stored once. A
name the catalog already holds at the same size is skipped without reading it; at
another size it is read, and other content under a stored name (the server's log
numbering was reset) is refused and alerted, never overwritten. A number missing
between shipped files (a log purged on the server before it was shipped) is alerted
as a gap; ``backupctl pitr`` shows it.

Only one run per target at a time: shipping holds an exclusive lock file in the
host's staging directory, and all of a target's shipping runs on its host.
"""

from __future__ import annotations

import io
import os
import shutil
import socket
from pathlib import Path

from backup_tasks import defaults, timefmt
from backup_tasks.errors import InputError, PermanentError
from backup_tasks.ops import host_lock
from backup_tasks.ops.runtime import Runtime
from backup_tasks.policy import binlog_window
from backup_tasks.records import events, manifest
from backup_tasks.records.keys import key_id
from backup_tasks.sources.db import dsn
from backup_tasks.sources.mysql import binlog_events, binlog_server
from backup_tasks.stages import compress as compress_stage
from backup_tasks.stages import encrypt as encrypt_stage
from backup_tasks.stages.digest import HashingWriter, file_digest

#: storage prefix of shipped logs; target names start with a letter or digit, so no backup's prefix is ever this
PREFIX = "_binlogs"
RECORD_FORMAT = "backup-tasks/binlog/1"


def object_key(target: str, name: str, sha256: str, suffix: str) -> str:
    return f"{PREFIX}/{target}/{name}.{sha256[:12]}{suffix}"


def binlog_target(rt: Runtime, name: str):
    target = rt.target(name)
    if target.kind != "mysql" or not target.binlog:
        raise InputError(f"target '{name}' is not a binlog target (kind {target.kind}, binlog = {str(target.binlog).lower()})",
                         "set binlog = true on a mysql target whose server writes a binary log")
    return target


def work_dir(rt: Runtime, target: str) -> Path:
    """Private scratch space of one target's shipping; its name starts with '.', so the staging sweep leaves it alone."""
    parent = rt.staging_root() / ".binlogs"
    parent.mkdir(mode=0o700, exist_ok=True)
    path = parent / target
    path.mkdir(mode=0o700, exist_ok=True)
    return path


def ship(rt: Runtime, target_name: str) -> dict:
    """Rotate and ship; returns what was shipped, skipped, refused, and the gaps found (names, never data)."""
    target = binlog_target(rt, target_name)
    if rt.settings.host and rt.settings.host != target.host:
        raise InputError(f"binary logs of target '{target.name}' are shipped on its host {target.host}, not on {rt.settings.host}",
                         f"run it there (backupctl pitr {target.name} --ship on {target.host}), or let beat's binlog:{target.name} do it")
    workdir = work_dir(rt, target.name)
    with host_lock.exclusive(workdir / "lock") as mine:
        if not mine:
            return {"target": target.name, "skipped": "another shipping run of this target is under way"}
        return _ship(rt, target, workdir)


def _ship(rt: Runtime, target, workdir: Path) -> dict:
    server = dsn.for_target(target)
    bin_dir = target.options.get("bin_dir")
    settings, logs, active = binlog_server.rotate_and_list(server, target.name)
    known = {row.name: row for row in rt.catalog.binlogs(target.name)}
    before = {g.before for g in binlog_window.gaps(_shipped(known.values()))}
    shipped, already, conflicts = [], [], []
    for name, size in logs:
        if name == active:
            continue
        row = known.get(name)
        if row is not None and row.size == size:
            already.append(name)
            continue
        path = binlog_server.fetch(server, name, workdir, target=target.name, bin_dir=bin_dir)
        try:
            sha = file_digest(path)[1]
            if row is not None and row.sha256 != sha:
                conflicts.append(name)
                events.emit(rt.catalog, events.BINLOG_CONFLICT,
                            f"target '{target.name}': binary log {name} on {server.address} differs from the one stored "
                            f"({path.stat().st_size} bytes, sha256 {sha[:12]}… against {row.size} bytes, {row.sha256[:12]}…); "
                            "it was not stored", target=target.name, host=target.host, binlog=name,
                            remedy="the server's binary log numbering was reset (RESET MASTER?) or another server writes "
                                   "under this name: take a new full backup and check log_basename")
                continue
            if row is None:
                known[name] = _store(rt, target, path, name, sha, settings.server_id)
                shipped.append(name)
        finally:
            path.unlink(missing_ok=True)
    found = binlog_window.gaps(_shipped(known.values()))
    for gap in found:
        if gap.before not in before:
            events.emit(rt.catalog, events.BINLOG_GAP,
                        f"target '{target.name}': binary log(s) {', '.join(gap.missing)} were purged on {server.address} "
                        f"before they were shipped; times between {timefmt.iso(gap.start)} and {timefmt.iso(gap.end)} "
                        "cannot be restored", target=target.name, host=target.host, missing=list(gap.missing),
                        remedy="take a full backup now (it starts a new restorable window), and keep binary logs on the "
                               "server longer than shipping can lag (expire_logs_days / binlog_expire_logs_seconds)")
    result = {"target": target.name, "active": active, "shipped": shipped, "already_shipped": len(already),
              "conflicts": conflicts, "gaps": [g.as_dict() for g in found], "warnings": settings.warnings()}
    if conflicts:
        raise PermanentError(f"target '{target.name}': binary log(s) {', '.join(conflicts)} differ from the stored ones "
                             f"of the same name and were not stored (shipped this run: {', '.join(shipped) or 'none'})",
                             "the server's log numbering was reset; take a new full backup and see the alert")
    return result


def _shipped(rows) -> list[binlog_window.Shipped]:
    return [binlog_window.Shipped(r.name, r.seq, r.first_event_at, r.last_event_at) for r in rows]


def _store(rt: Runtime, target, path: Path, name: str, sha: str, server_id: int):
    """Compress → encrypt → every tier, then the signed record, then the catalog row (the last word)."""
    first, last, count = binlog_events.span(path)
    settings = rt.settings
    method = settings.compression
    encrypted = bool(settings.recipients)
    suffix = compress_stage.SUFFIX[method] + (encrypt_stage.SUFFIX if encrypted else "")
    key = object_key(target.name, name, sha, suffix)
    packed = path.with_name(path.name + suffix + ".tmp")
    squeezed = path.with_name(path.name + ".zst.tmp")
    try:
        _write(squeezed, lambda out: _compress(path, out, settings))
        if encrypted:
            with open(squeezed, "rb") as src:
                size, stored_sha = _write(packed, lambda out: encrypt_stage.encrypt(src, out, rt.recipients))
        else:
            os.replace(squeezed, packed)
            size, stored_sha = file_digest(packed)
        tiers = [t.name for t in rt.config.tiers_of(target)]
        for tier in tiers:
            with open(packed, "rb") as fh:
                rt.storage(tier).put(key, fh, size_hint=size)
        seq = binlog_window.seq_of(name)[1]
        record = manifest.sign({
            "format": RECORD_FORMAT, "target": target.name, "host": target.host, "worker": socket.gethostname(), "name": name,
            "seq": seq, "server_id": server_id, "size": path.stat().st_size, "sha256": sha,
            "first_event_at": timefmt.iso(first), "last_event_at": timefmt.iso(last), "events": count,
            "stored": {"key": key, "size": size, "sha256": stored_sha},
            "compression": method, "encryption": {"method": "age", "recipients": [key_id(r) for r in settings.recipients]}
            if encrypted else None, "shipped_at": timefmt.iso(timefmt.now())}, rt.signer)
        body = manifest.dumps(record)
        for tier in tiers:
            rt.storage(tier).put(key + ".json", io.BytesIO(body))
        return rt.catalog.record_binlog(
            target=target.name, name=name, seq=seq, server_id=server_id, size=path.stat().st_size, sha256=sha,
            first_event_at=first, last_event_at=last, shipped_at=timefmt.parse(record["shipped_at"]), key=key,
            size_stored=size, sha256_stored=stored_sha,
            detail={"tiers": tiers, "compression": method, "encryption": record["encryption"], "events": count})
    finally:
        for tmp in (squeezed, packed):
            tmp.unlink(missing_ok=True)


def _compress(path: Path, out, settings) -> None:
    with open(path, "rb") as src:
        if settings.compression == "none":
            shutil.copyfileobj(src, out, defaults.CHUNK_SIZE)
        else:
            compress_stage.compress(src, out, settings.compression, level=settings.compression_level,
                                    threads=settings.compression_threads)


def _write(final: Path, produce) -> tuple[int, str]:
    fd = os.open(final, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb", buffering=0) as raw:
        writer = HashingWriter(raw)
        produce(writer)
    return writer.size, writer.sha256


def server_checks(rt: Runtime) -> dict[str, dict]:
    """For ``backupctl targets``: each binlog target's server settings, as this host can see them.

    A server that writes no binary log is a ConfigError naming the setting: every backup
    and every shipping run of that target would fail. A server that cannot be reached
    from here is reported, not failed on: ``targets`` also runs on hosts that do not
    reach every database.
    """
    from backup_tasks.errors import BackupError, ConfigError, SourceError

    out = {}
    for target in rt.config.targets.values():
        if not target.binlog or (rt.settings.host and target.host != rt.settings.host):
            continue
        try:
            found = binlog_server.check(dsn.for_target(target), target.name)
        except SourceError as exc:
            if "log_bin" in exc.message:
                raise ConfigError(exc.message, exc.remedy, file=rt.config.file, where=f"target '{target.name}'",
                                  field="binlog") from None
            out[target.name] = {"checked": False, "reason": exc.message}
            continue
        except BackupError as exc:
            out[target.name] = {"checked": False, "reason": exc.message}
            continue
        out[target.name] = {"checked": True, "log_bin": found.log_bin, "binlog_format": found.binlog_format,
                            "server_id": found.server_id, "warnings": found.warnings()}
    return out
