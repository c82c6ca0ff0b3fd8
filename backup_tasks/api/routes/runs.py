"""/runs/{id}: the live state of a backup run (catalog stage plus progress) or of a verify job."""

from __future__ import annotations

import logging

from celery.result import AsyncResult
from fastapi import APIRouter, Depends, Path

from backup_tasks import client
from backup_tasks.api import deps, schemas, verify_jobs
from backup_tasks.api.operations import requires
from backup_tasks.api.errors import ERROR_RESPONSES, NotFound
from backup_tasks.records.catalog import Status
from backup_tasks.ops.runtime import Runtime
from backup_tasks.orchestration.celery_app import app

router = APIRouter(tags=["runs"], responses=ERROR_RESPONSES)
log = logging.getLogger("backup_tasks.api")


@router.get("/runs/{run_id}", response_model=schemas.RunState, **requires("viewer"))
def get_run(run_id: str = Path(pattern=schemas.ID_PATTERN, description="a run id (POST /backups) or verify job id"),
            rt: Runtime = Depends(deps.runtime)):
    """Status and stage from the catalog; while a stage runs, its latest byte progress if it reports one."""
    row = rt.catalog.find(run_id)
    if row is None:
        job = verify_jobs.state(rt, run_id)
        if job is None:
            raise NotFound(f"no run or verify job with id '{run_id}'", "use the id or status_url a POST returned")
        return job
    run = client.Run(run_id, rt)
    info = run.info()
    progress = _progress(rt, run) if info["status"] == Status.RUNNING else None
    return {**info, "kind": "backup", "backup_id": run_id, "status": str(info["status"]), "progress": progress}


def _progress(rt: Runtime, run: client.Run) -> dict | None:
    """Run.progress() where the client has it; else a PROGRESS state of the run's own task, if any."""
    if rt.settings.embedded:
        return None
    try:
        reported = getattr(run, "progress", None)
        if reported is not None:
            return reported()
        result = AsyncResult(run.id, app=app)
        return result.info if result.state == "PROGRESS" and isinstance(result.info, dict) else None
    except Exception as exc:  # noqa: BLE001 - progress is a nicety: the catalog's stage still answers
        log.warning("progress of %s unavailable: %s", run.id, type(exc).__name__)
        return None
