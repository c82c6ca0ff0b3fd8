"""Restore: one command on the bad night, and it must not make things worse.

Data is written into a private sibling of the destination and moved into place only
after the stored and plaintext hashes matched the signed manifest, so a damaged or
swapped artifact never lands half-written over anything. Existing data is replaced only
with ``force``.
"""

from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path

from backup_tasks import readback
from backup_tasks.errors import InputError, RestoreRefused
from backup_tasks.runtime import Runtime
from backup_tasks.sources.base import source_for


def restore_backup(rt: Runtime, backup_id: str, dest: Path, *, force: bool = False, dry_run: bool = False) -> dict:
    row = rt.catalog.get(backup_id)
    found = readback.locate(rt, row)
    doc = found.doc
    source = source_for(doc["kind"])
    dest = _destination(doc, Path(dest).expanduser().absolute())
    occupied = _occupied(dest)
    base = {"backup_id": backup_id, "target": doc["target"], "kind": doc["kind"], "destination": str(dest),
            "location": found.tier, "notes": found.notes}
    if dry_run:
        summary = source.restore(None, doc, dest, force=True, dry_run=True)
        return {**base, "dry_run": True, "destination_not_empty": occupied, "needs_force": occupied and not force, **summary}
    if occupied and not force:
        raise RestoreRefused(
            f"{dest} exists and is not empty; refusing to overwrite it",
            "restore into an empty or new path, or pass --force to replace what is there",
        )
    dest.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    staging = dest.parent / f".{dest.name}.restoring-{secrets.token_hex(4)}"
    if source.suffix == "tar":
        staging.mkdir(mode=0o700)
    try:
        with readback.plaintext(rt, found) as (stream, stored, plain):
            summary = source.restore(stream, doc, staging, force=False, dry_run=False)
            plain.drain()
        readback.check_digests(doc, stored, plain)
        _commit(staging, dest)
    finally:
        _remove(staging)
    return {**base, "dry_run": False, **summary, "restored_to": str(dest)}


def _destination(doc: dict, dest: Path) -> Path:
    """A SQLite backup restored 'to a directory' lands there under its original file name."""
    if doc["kind"] == "sqlite" and dest.is_dir():
        return dest / Path(doc["source"].get("database", f"{doc['target']}.sqlite")).name
    if doc["kind"] != "sqlite" and dest.exists() and not dest.is_dir():
        raise InputError(f"{dest} is a file; a {doc['kind']} backup restores into a directory", "pass a directory to --to")
    return dest


def _occupied(dest: Path) -> bool:
    if dest.is_dir():
        return any(os.scandir(dest))
    return dest.exists() and dest.stat().st_size > 0


def _commit(staging: Path, dest: Path) -> None:
    """Move the verified restore into place; with --force, entries it brings replace existing ones."""
    if staging.is_file() or not dest.exists():
        os.replace(staging, dest)
        return
    if dest.is_dir() and not any(os.scandir(dest)):
        dest.rmdir()
        os.replace(staging, dest)
        return
    for entry in os.scandir(staging):
        _merge(Path(entry.path), dest / entry.name)


def _merge(src: Path, dst: Path) -> None:
    if src.is_dir() and not src.is_symlink() and dst.is_dir() and not dst.is_symlink():
        for entry in os.scandir(src):
            _merge(Path(entry.path), dst / entry.name)
        shutil.copystat(src, dst, follow_symlinks=False)
        return
    if dst.is_dir() and not dst.is_symlink():
        shutil.rmtree(dst)
    os.replace(src, dst)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
