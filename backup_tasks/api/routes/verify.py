"""POST /backups/{id}/verify: a full read-back verification (see verify_jobs.py for 200 vs 202)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from backup_tasks.api import deps, schemas, verify_jobs
from backup_tasks.api.operations import requires
from backup_tasks.api.errors import ERROR_RESPONSES
from backup_tasks.api.routes import lookup
from backup_tasks.api.routes.backups import BackupId
from backup_tasks.ops.runtime import Runtime

router = APIRouter(tags=["backups"], responses=ERROR_RESPONSES)


@router.post("/backups/{backup_id}/verify", response_model=schemas.VerifyResult,
             responses={202: {"model": schemas.VerifyAccepted, "description": "enqueued on the verify queue (with a broker)"}},
             **requires("operator"))
def verify_backup(backup_id: BackupId, request: Request, rt: Runtime = Depends(deps.runtime)):
    """Verify now: 202 and a status URL with a broker; 200 with the verdict on the embedded default.

    A failed check is a 200 (or a job status) with ``ok: false``: the request worked, the backup did not.
    """
    row = lookup.stored_backup(rt, backup_id, "verify")
    actor = deps.actor_of(request)
    if rt.settings.embedded:
        return verify_jobs.run_now(rt, row, actor)
    job_id = verify_jobs.enqueue(rt, row, actor)
    status_url = str(request.url_for("get_run", run_id=job_id).path)
    return JSONResponse(status_code=202, headers={"Location": status_url},
                        content={"job_id": job_id, "backup_id": backup_id, "status": "queued", "status_url": status_url})
