"""/health: broker, catalog and every storage tier, each with its status; 200 if all answer, else 503."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from backup_tasks.api import deps, health, schemas
from backup_tasks.api.operations import requires
from backup_tasks.api.errors import ERROR_RESPONSES
from backup_tasks.ops.runtime import Runtime

router = APIRouter(tags=["health"], responses={k: v for k, v in ERROR_RESPONSES.items() if k != 503})


@router.get("/health", response_model=schemas.Health,
            responses={503: {"model": schemas.Health, "description": "a component is unreachable"}}, **requires("viewer"))
def get_health(rt: Runtime = Depends(deps.runtime)):
    report = health.check(rt)
    return JSONResponse(report, status_code=200 if report["status"] == health.OK else 503)
