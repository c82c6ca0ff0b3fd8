"""POST /cleanup: apply retention (or, by default over HTTP, only plan it) and return the plan with reasons."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from backup_tasks.api import deps, schemas
from backup_tasks.api.operations import requires
from backup_tasks.api.errors import ERROR_RESPONSES
from backup_tasks.api.routes import lookup
from backup_tasks.ops.cleanup import run_cleanup
from backup_tasks.ops.runtime import Runtime

router = APIRouter(tags=["maintenance"], responses=ERROR_RESPONSES)


@router.post("/cleanup", response_model=schemas.CleanupReport, **requires("admin"))
def cleanup(request: Request, body: schemas.CleanupRequest = schemas.CleanupRequest(), rt: Runtime = Depends(deps.runtime)):
    """The retention plan (keep/remove per copy, with reasons); removes copies and debris unless ``dry_run``.

    ``dry_run`` defaults to true here. Protected backups are never removed (README: Retention and cleanup).
    """
    if body.target:
        lookup.target(rt, body.target)
    return run_cleanup(rt, body.target, dry_run=body.dry_run, actor=deps.actor_of(request))
