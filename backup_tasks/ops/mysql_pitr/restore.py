"""Restore a binlog target to a moment: the newest dump before it, then its binary logs replayed up to it.

The dump is restored exactly as ``restore --to-database`` does (same refusals, same
digest checks). Each binary log needed is then read back from storage, its signed
record checked and both of its hashes compared, into the private staging directory,
and all of them are replayed through one ``mariadb-binlog | mariadb`` session
(``sources/mysql/binlog_replay.py``). A time the shipped logs cannot reach is refused
before anything is written.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from backup_tasks import defaults
from backup_tasks.errors import InputError, RestoreRefused, StorageError, TransientError, VerificationFailed
from backup_tasks.ops.mysql_pitr import window as gather
from backup_tasks.ops import restore
from backup_tasks.ops.mysql_pitr.ship import binlog_target
from backup_tasks.ops.runtime import Runtime
from backup_tasks.policy import binlog_window
from backup_tasks.records import keys, manifest
from backup_tasks.sources.base import source_for
from backup_tasks.sources.mysql import binlog_replay
from backup_tasks.sources.mysql.client import check_database_name
from backup_tasks.stages.compress import decompressing_reader
from backup_tasks.stages.digest import HashingReader
from backup_tasks.stages.encrypt import DecryptingReader
from backup_tasks.timefmt import iso


def parse_time(text: str) -> datetime:
    """An ISO 8601 time with a zone; InputError otherwise (a time without a zone means different moments on different hosts)."""
    try:
        at = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise InputError(f"'{text}' is not an ISO 8601 time", "write e.g. 2026-12-05T07:00:00Z") from None
    if at.tzinfo is None:
        raise InputError(f"'{text}' has no time zone", "add one: 2026-12-05T07:00:00Z or 2026-12-05T08:00:00+01:00")
    return at.astimezone(timezone.utc)


def restore_to_time(rt: Runtime, target_name: str, when: str, database: str, *, force: bool = False, dry_run: bool = False,
                    server: str | None = None, server_password: str | None = None) -> dict:
    target = binlog_target(rt, target_name)
    at = parse_time(when)
    check_database_name(database)
    plan = binlog_window.plan(gather.bases(rt, target.name), gather.shipped(rt, target.name), at)
    base_row = rt.catalog.get(plan.base.backup_id)
    doc = {**(base_row.manifest or {}), "kind": "mysql", "target": target.name, "backup_id": base_row.id}
    srv = restore.database_server(rt, doc, server, server_password)
    source = source_for("mysql")
    state = source.database_state(srv, database)
    occupied = state["exists"] and state["tables"] > 0
    source_db = doc["source"]["database"]
    out = {"target": target.name, "kind": "mysql", "target_time": iso(at), "stop_datetime": plan.stop_datetime.replace(" ", "T") + "Z",
           "base": {"backup_id": plan.base.backup_id, "snapshot_at": iso(plan.base.at), "file": plan.base.file,
                    "position": plan.base.position},
           "binlogs": list(plan.files), "database": database, "source_database": source_db, "server": srv.address,
           "rewrite_db": source_db != database, "dry_run": dry_run}
    if dry_run:
        return {**out, "database_exists": state["exists"], "existing_tables": state["tables"], "needs_force": occupied and not force}
    if occupied and not force:
        raise RestoreRefused(f"database '{database}' on {srv.address} exists and has {state['tables']} table(s); refusing to overwrite it",
                             "restore into a new database name, or pass --force to replace its tables")
    rows = {r.name: r for r in rt.catalog.binlogs(target.name)}
    workdir = Path(tempfile.mkdtemp(prefix=f"pitr-{target.name}-", dir=rt.staging_root()))
    try:
        # Every log is read back and proven before the database is touched: a damaged one refuses the restore.
        files = [fetch(rt, rows[name], workdir) for name in plan.files]
        loaded = restore.restore_to_database(rt, plan.base.backup_id, database, server=server, server_password=server_password,
                                             force=force)
        replayed = binlog_replay.replay(files, start_position=plan.start_position, stop_datetime=plan.stop_datetime,
                                        source_database=source_db, dest=srv.on(database), bin_dir=target.options.get("bin_dir"))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return {**out, "dump": {k: loaded.get(k) for k in ("location", "replaced_existing", "tables")}, **replayed,
            "restored_to": f"{srv.address}/{database}"}


def fetch(rt: Runtime, row, workdir: Path) -> Path:
    """One shipped log as plaintext in ``workdir``, its signed record and both hashes checked; tiers tried in order."""
    notes = []
    for tier in row.detail.get("tiers", []):
        try:
            return _fetch_from(rt, row, tier, workdir)
        except (StorageError, TransientError, VerificationFailed) as exc:
            notes.append(f"tier '{tier}': {exc}")
    raise VerificationFailed(f"binary log {row.name} of target '{row.target}' could not be read back: {'; '.join(notes)}",
                             "check the tiers; a log that no tier holds intact is a gap (backupctl pitr TARGET)",
                             check="binlog-readback")


def _fetch_from(rt: Runtime, row, tier: str, workdir: Path) -> Path:
    storage = rt.storage(tier)
    label = f"binary log {row.name}"
    with storage.get(row.key + ".json") as fh:
        record = json.loads(fh.read())
    manifest.check_signature(record, rt.verifier, backup_id=label)
    if (record.get("name"), record.get("sha256"), (record.get("stored") or {}).get("sha256")) != (row.name, row.sha256,
                                                                                                   row.sha256_stored):
        raise VerificationFailed(f"{label}: the signed record in tier '{tier}' does not match the catalog",
                                 "rebuild nothing by hand; restore from another tier", check="binlog-record")
    dest = workdir / f"raw-{row.name}"
    identities = keys.identities_for(rt.settings.identities_file, record["encryption"]["recipients"]) if record.get("encryption") else None
    plain_hash = hashlib.sha256()
    with storage.get(row.key) as raw:
        stored = HashingReader(raw)
        decrypted = DecryptingReader(stored, identities, what=label) if identities else None
        reader = None
        try:
            reader = decompressing_reader(decrypted or stored, record["compression"])
            with open(dest, "xb") as out:
                dest.chmod(0o600)
                while chunk := reader.read(defaults.CHUNK_SIZE):
                    plain_hash.update(chunk)
                    out.write(chunk)
        finally:
            if reader is not None and reader is not (decrypted or stored):
                reader.close()  # its decompressing thread, when a write failed half-way
            if decrypted is not None:
                decrypted.close()
            stored.drain()
    if stored.sha256 != row.sha256_stored or plain_hash.hexdigest() != row.sha256:
        dest.unlink(missing_ok=True)
        raise VerificationFailed(f"{label}: what tier '{tier}' holds does not hash to what was shipped",
                                 "the object was altered or damaged; restore from another tier", check="binlog-sha256")
    return dest
