"""POST /backups/{id}/restore: restore into a path below a configured restore root, on this server's host.

It runs in the request (like ``backupctl restore``): the destination is a path on the
API server's own filesystem, and the restore's safety (private sibling, hashes checked
before the rename, refusal without ``force``) is restore.py's. Clients should allow a
timeout as long as the restore; ``dry_run`` answers at once.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from backup_tasks.records import audit
from backup_tasks.api import deps, destinations, schemas
from backup_tasks.api.operations import requires
from backup_tasks.api.errors import ERROR_RESPONSES
from backup_tasks.api.routes import lookup
from backup_tasks.api.routes.backups import BackupId
from backup_tasks.ops.restore import restore_backup as restore
from backup_tasks.ops.runtime import Runtime

router = APIRouter(tags=["backups"], responses=ERROR_RESPONSES)


@router.post("/backups/{backup_id}/restore", response_model=schemas.RestoreResult, **requires("admin"))
def restore_backup(backup_id: BackupId, body: schemas.RestoreRequest, request: Request, rt: Runtime = Depends(deps.runtime)):
    """Restore (or with ``dry_run`` list what would be written); 409 if the destination is not empty without ``force``.

    ``paths`` selects files of a files or config backup, as ``backupctl restore --path`` does.
    """
    row = lookup.backup(rt, backup_id)
    detail = {"to": body.destination, "dry_run": body.dry_run, "force": body.force, "paths": body.paths,
              "strip_source_path": body.strip_source_path}
    with audit.audited(rt.catalog, "restore", actor=deps.actor_of(request), target=row.target, backup_id=backup_id,
                       detail={k: v for k, v in detail.items() if v}) as entry:
        dest = destinations.check(body.destination, rt.config.api.restore_roots)
        lookup.stored_backup(rt, backup_id, "restore")
        if body.dry_run:
            entry.outcome = "dry-run"
        into = f"{dest}/" if body.destination.endswith("/") else dest  # "into this directory", as on the command line
        return restore(rt, backup_id, into, force=body.force, dry_run=body.dry_run, paths=tuple(body.paths),
                       strip_source_path=body.strip_source_path)
