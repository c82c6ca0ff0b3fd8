"""/targets: the validated targets, credentials shown as references only (backupctl targets)."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from backup_tasks.api import deps, schemas
from backup_tasks.api.operations import requires
from backup_tasks.api.errors import ERROR_RESPONSES
from backup_tasks.ops.runtime import Runtime

router = APIRouter(tags=["targets"], responses=ERROR_RESPONSES)


@router.get("/targets", response_model=list[schemas.TargetOut], **requires("viewer"))
def list_targets(rt: Runtime = Depends(deps.runtime)):
    return [target.redacted() for target in rt.config.targets.values()]
