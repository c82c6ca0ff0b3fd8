"""Resolving the names and ids in a request, as 404s (not the CLI's exit-2 input errors)."""

from __future__ import annotations

from backup_tasks.api.errors import Conflict, NotFound
from backup_tasks.records.catalog import BackupRow, Status
from backup_tasks.config import Target
from backup_tasks.errors import InputError
from backup_tasks.ops.runtime import Runtime


def target(rt: Runtime, name: str) -> Target:
    try:
        return rt.target(name)
    except InputError as exc:
        raise NotFound(exc.message, exc.remedy) from None


def backup(rt: Runtime, backup_id: str) -> BackupRow:
    row = rt.catalog.find(backup_id)
    if row is None:
        raise NotFound(f"no backup with id '{backup_id}' in the catalog", "list backups with GET /api/v1/backups")
    return row


def stored_backup(rt: Runtime, backup_id: str, doing: str) -> BackupRow:
    """A backup with something stored to read: not running, not deleted (409 otherwise)."""
    row = backup(rt, backup_id)
    if row.status in (Status.RUNNING, Status.DELETED):
        raise Conflict(f"backup {backup_id} is {row.status}; there is nothing stored to {doing}",
                       "wait for a running backup to finish, or pick another id from GET /api/v1/backups")
    return row
