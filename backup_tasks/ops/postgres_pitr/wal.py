"""PostgreSQL's WAL archive: ``wal push`` (archive_command), the shipping task, ``wal get`` (restore_command).

Push touches only this host's disk (logspool.py): PostgreSQL waits on it, and a slow
network must never stall the server's WAL. Shipping (logship.py) and get use the
catalog and the tiers. Get streams one object back through decrypt → decompress into
PostgreSQL's requested path, checks both sha256 against the catalog, and only then
renames it into place: recovery never reads a half-written or altered segment.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from backup_tasks.errors import BackupError, InputError, ObjectNotFound, PermanentError
from backup_tasks.ops.postgres_pitr import logship
from backup_tasks.ops.postgres_pitr.logspool import Spool
from backup_tasks.ops.runtime import Runtime
from backup_tasks.records import keys
from backup_tasks.sources.postgres import walnames
from backup_tasks.stages.compress import decompressing_reader
from backup_tasks.stages.digest import HashingReader
from backup_tasks.stages.encrypt import DecryptingReader

log = logging.getLogger(__name__)

FAMILY = "wal"


class SegmentMissing(BackupError):
    """The archive holds no such WAL file: recovery has reached the end of what is stored."""


def physical_target(rt: Runtime, name: str):
    target = rt.target(name)
    if target.kind != "postgres" or target.mode != "physical":
        raise InputError(f"target '{name}' is not a physical PostgreSQL target (kind {target.kind}, mode {target.mode})",
                         'set mode = "physical" on a kind = "postgres" target to archive its WAL')
    return target


def describe(name: str, path: Path | None = None) -> tuple[str, int | None, int | None, dict | None] | None:
    """What a spooled WAL file is: (kind, timeline, segment number, detail); a .history file's lines go in detail."""
    kind = walnames.kind_of(name)
    if kind == "segment":
        return (kind, *walnames.parse_segment(name), None)
    if kind == "partial":
        return (kind, *walnames.parse_segment(name.split(".")[0]), None)
    if kind == "history":
        lines = walnames.parse_history(path.read_text()) if path is not None else []
        return (kind, walnames.history_timeline(name), None,
                {"history": [[tli, walnames.format_lsn(lsn)] for tli, lsn in lines]})
    if kind == "backup":  # the backup history file written at a base backup's start segment
        return (kind, *walnames.parse_segment(name[:24]), None)
    return None


def push(rt: Runtime, target_name: str, path: Path) -> dict:
    """archive_command: durable in the spool, or an error; never a network call."""
    target = physical_target(rt, target_name)
    if describe(path.name) is None:
        raise InputError(f"{path.name} is not a WAL file name", "archive_command passes %p, the path of a WAL file")
    spool = Spool(rt.settings.spool_dir, target.name)
    outcome = spool.push(path)
    size = spool.size()
    if size > rt.settings.spool_max_bytes:
        # Said here too, so that PostgreSQL's own log shows it; the shipping task sends the alert.
        log.error("the WAL spool of target %s holds %d bytes, over spool_max_bytes (%d): shipping is falling behind; "
                  "nothing is dropped", target.name, size, rt.settings.spool_max_bytes)
    return {"target": target.name, "name": path.name, "outcome": outcome, "spool_bytes": size}


def ship(rt: Runtime, target_name: str) -> dict:
    physical_target(rt, target_name)
    return logship.ship(rt, target_name, FAMILY, describe)


def get(rt: Runtime, target_name: str, name: str, dest: Path) -> dict:
    """restore_command: write WAL file ``name`` to ``dest``; SegmentMissing if the archive does not hold it."""
    target = physical_target(rt, target_name)
    row = rt.catalog.find_log(target.name, FAMILY, name)
    if row is None:
        raise SegmentMissing(f"{name} is not in the archive of target '{target.name}'", "recovery ends at the last stored WAL")
    return fetch(rt, row, dest)


def fetch(rt: Runtime, row, dest: Path) -> dict:
    """One recorded WAL file to ``dest``: renamed into place only once both of its sha256 match the catalog's record."""
    name = row.name
    identities = keys.identities_for(rt.settings.identities_file, row.key_ids) if row.key_ids else None
    errors = []
    for tier in row.tiers:
        tmp = dest.with_name(f".{dest.name}.backup-tasks.tmp")
        try:
            with rt.storage(tier).get(row.key) as raw:
                stored = HashingReader(raw)
                decrypted = DecryptingReader(stored, identities, what=f"WAL {name}") if identities else None
                decompressed = None
                try:
                    decompressed = decompressing_reader(decrypted or stored, row.compression)
                    plain = HashingReader(decompressed)
                    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                    with os.fdopen(fd, "wb") as out:
                        while chunk := plain.read(1 << 20):
                            out.write(chunk)
                        out.flush()
                        os.fsync(out.fileno())
                finally:
                    if decompressed is not None and decompressed is not (decrypted or stored):
                        decompressed.close()  # its decompressing thread, when a write failed half-way
                    if decrypted is not None:
                        decrypted.close()
                stored.drain()
            if (stored.sha256, plain.sha256) != (row.sha256_stored, row.sha256_plain):
                raise PermanentError(f"WAL {name} on tier '{tier}' does not match the sha256 the catalog recorded",
                                     "the stored object was altered; restore from another tier")
            os.replace(tmp, dest)
            return {"target": row.target, "name": name, "tier": tier, "size": plain.size}
        except ObjectNotFound as exc:
            errors.append(f"tier '{tier}': {exc.message}")
        except BackupError as exc:
            errors.append(f"tier '{tier}': {exc.message}")
        finally:
            tmp.unlink(missing_ok=True)
    raise PermanentError(f"WAL {name} of target '{row.target}' is recorded but no tier returned it intact: {'; '.join(errors)}",
                         "check the tiers; recovery stops here rather than ending early")
