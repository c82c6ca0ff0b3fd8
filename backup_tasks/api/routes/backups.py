"""/backups: enqueue a run, list the catalog (keyset pages), show one, delete one."""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime
from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import JSONResponse

from backup_tasks import client, defaults
from backup_tasks.api import deps, schemas
from backup_tasks.api.operations import requires
from backup_tasks.api.errors import ERROR_RESPONSES
from backup_tasks.api.routes import lookup
from backup_tasks.records.catalog import Status, dumps_row
from backup_tasks.errors import InputError
from backup_tasks.ops import listing_store, readback
from backup_tasks.ops.delete import delete_backup as delete
from backup_tasks.ops.runtime import Runtime

router = APIRouter(tags=["backups"], responses=ERROR_RESPONSES)
BackupId = Annotated[str, Path(pattern=schemas.ID_PATTERN, description="a backup id from GET /backups")]


@router.post("/backups", status_code=202, response_model=schemas.RunAccepted, **requires("operator"))
def create_backup(body: schemas.BackupRequest, request: Request, rt: Runtime = Depends(deps.runtime)):
    """Enqueue a backup run of ``target`` on its host's queue; poll ``status_url`` for its stage and result.

    On the embedded default (no broker) the chain runs in this request, so the run has
    already ended when the 202 arrives.
    """
    lookup.target(rt, body.target)
    run = client.enqueue_backup(body.target, body.type, actor=deps.actor_of(request), rt=rt, rehash=body.rehash)
    info = run.info()
    status_url = str(request.url_for("get_run", run_id=run.id).path)
    return JSONResponse(status_code=202, headers={"Location": status_url}, content={
        "id": run.id, "target": body.target, "type": body.type, "status": str(info["status"]), "stage": info.get("stage"),
        "status_url": status_url})


@router.get("/backups", response_model=schemas.BackupPage, **requires("viewer"))
def list_backups(request: Request, rt: Runtime = Depends(deps.runtime),
                 target: Annotated[str | None, Query(pattern=schemas.NAME_PATTERN)] = None,
                 status: Status | None = None,
                 kind: schemas.SourceKind | None = None,
                 limit: Annotated[int, Query(ge=1, le=defaults.API_MAX_PAGE_SIZE)] = defaults.API_PAGE_SIZE,
                 cursor: Annotated[str | None, Query(max_length=512, description="next_cursor of the previous page")] = None):
    """Catalog entries, newest first, ``limit`` per page; follow ``next`` for older ones."""
    if target:
        lookup.target(rt, target)
    rows = rt.catalog.list(target=target, status=status, kind=kind, before=_decode(cursor) if cursor else None,
                           limit=limit + 1)
    page, more = rows[:limit], len(rows) > limit
    next_cursor = _encode(page[-1].created_at, page[-1].id) if more else None
    next_url = f"{request.url.path}?{urlencode({**request.query_params, 'cursor': next_cursor})}" if more else None
    return {"items": [dumps_row(r) for r in page], "next_cursor": next_cursor, "next": next_url}


@router.get("/backups/{backup_id}", response_model=schemas.BackupDetail, **requires("viewer"))
def get_backup(backup_id: BackupId, rt: Runtime = Depends(deps.runtime),
               files: Annotated[bool, Query(description="the stored manifest and the file list (backupctl show --files)")] = False):
    """One backup with its manifest summary and verification history (backupctl show)."""
    row = lookup.stored_backup(rt, backup_id, "show") if files else lookup.backup(rt, backup_id)
    listed: dict = {}
    manifest = row.manifest
    if files:
        found = readback.locate(rt, row)
        manifest, listed = found.doc, {"files": listing_store.file_list(rt, found)}
    return {**dumps_row(row), "stage": row.stage, "parent_id": row.parent_id, "manifest": manifest, **listed,
            "verifications": [{"at": v.at.isoformat(), "ok": v.ok, "check": v.check, "detail": v.detail}
                              for v in rt.catalog.verifications(backup_id)]}


@router.delete("/backups/{backup_id}", response_model=schemas.DeleteResult, **requires("admin"))
def delete_backup(backup_id: BackupId, request: Request, rt: Runtime = Depends(deps.runtime)):
    """Remove every stored copy; 409 with the reason for a protected backup (ops/delete.py), nothing removed."""
    lookup.backup(rt, backup_id)
    return delete(rt, backup_id, actor=deps.actor_of(request))


def _encode(created_at: datetime, backup_id: str) -> str:
    raw = json.dumps([created_at.isoformat(), backup_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode(cursor: str) -> tuple[datetime, str]:
    try:
        at, backup_id = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        when = datetime.fromisoformat(at)
        if not isinstance(backup_id, str) or when.tzinfo is None:
            raise ValueError
        return when, backup_id
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
        raise InputError("the cursor is not one this API issued", "pass next_cursor from the previous page unchanged, "
                         "or drop cursor to start from the newest") from None
