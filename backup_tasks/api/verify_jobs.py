"""Verification requested over HTTP: in-process when embedded, a ``backup.verify`` task otherwise.

A verify reads the whole backup back from storage, which can take as long as the
backup did. With a broker the API therefore enqueues ``backup.verify`` on the
``verify`` queue (a worker holding the identities runs it) and answers 202 with a job
id and a status URL (GET /runs/{job_id}); on the embedded default there is no worker,
so it runs in the request and answers 200 with the result.

A job id is ``<backup id>.verify-<hex>``: its backup is readable from the id, and the
job is known by its ``verify``/``accepted`` audit entry, so an id nobody issued is a 404
rather than an eternal "queued". The verdict comes from the task's result while Celery
keeps it (7 days), then from the catalog's verification history.
"""

from __future__ import annotations

import secrets

from celery.result import AsyncResult
from kombu.exceptions import OperationalError

from backup_tasks.records import audit
from backup_tasks.errors import ServiceUnavailable, VerificationFailed
from backup_tasks.ops.runtime import Runtime
from backup_tasks.ops.verify import verify_backup
from backup_tasks.orchestration.celery_app import app
from backup_tasks.orchestration.tasks import verify

SEPARATOR = ".verify-"
ACCEPTED = "accepted"


def backup_of(job_id: str) -> str | None:
    backup_id, sep, suffix = job_id.rpartition(SEPARATOR)
    return backup_id if sep and backup_id and suffix.isalnum() else None


def run_now(rt: Runtime, row, actor: str) -> dict:
    """Embedded default: verify in this process; a failed check is a result, not an error."""
    try:
        with audit.audited(rt.catalog, "verify", actor=actor, target=row.target, backup_id=row.id) as entry:
            try:
                result = verify_backup(rt, row.id)
            except VerificationFailed as exc:
                entry.outcome, entry.detail["check"] = audit.FAILED, exc.check
                raise
    except VerificationFailed as exc:
        return {"backup_id": row.id, "ok": False, "status": "failed", "check": exc.check, "message": exc.message,
                "remedy": exc.remedy}
    return {**result, "backup_id": row.id, "ok": True, "status": "verified"}


def enqueue(rt: Runtime, row, actor: str) -> str:
    """Send ``backup.verify`` for ``row`` and return the job id; ServiceUnavailable if the broker is down."""
    job_id = f"{row.id}{SEPARATOR}{secrets.token_hex(4)}"
    try:
        with app.connection_for_write() as conn:  # seconds, not kombu's long publish retries
            conn.ensure_connection(max_retries=2, interval_start=0.2, interval_step=0.5)
        verify.apply_async(args=(row.id,), task_id=job_id)
    except (OperationalError, ConnectionError) as exc:
        audit.record(rt.catalog, "verify", actor=actor, outcome=audit.FAILED, target=row.target, backup_id=row.id,
                     detail={"job": job_id, "error": f"broker unreachable ({type(exc).__name__})"})
        raise ServiceUnavailable(f"cannot enqueue the verification of {row.id}: broker unreachable ({type(exc).__name__})",
                                 "is Redis up? check broker_url; GET /api/v1/health shows it") from None
    audit.record(rt.catalog, "verify", actor=actor, outcome=ACCEPTED, target=row.target, backup_id=row.id,
                 detail={"job": job_id})
    return job_id


def state(rt: Runtime, job_id: str) -> dict | None:
    """The job's live state, or None if no such job was accepted."""
    backup_id = backup_of(job_id)
    row = rt.catalog.find(backup_id) if backup_id else None
    if row is None:
        return None
    accepted = next((a for a in rt.catalog.audit(action="verify", target=row.target)
                     if a.backup_id == backup_id and a.outcome == ACCEPTED and (a.detail or {}).get("job") == job_id), None)
    if accepted is None:
        return None
    out = {"id": job_id, "kind": "verify", "backup_id": backup_id, "target": row.target, "stage": "verify",
           "accepted_at": accepted.at.isoformat()}
    celery_state, result = _celery(job_id)
    if celery_state == "SUCCESS" and isinstance(result, dict):
        return {**out, "status": "verified", "ok": True, "result": result}
    if celery_state == "FAILURE":
        if isinstance(result, VerificationFailed) or type(result).__name__ == "VerificationFailed":
            later = _verifications_since(rt, backup_id, accepted.at)
            check = later[0].check if later and not later[0].ok else getattr(result, "check", None)
            return {**out, "status": "failed", "ok": False, "check": check, "message": str(result)}
        return {**out, "status": "error", "ok": False, "error": {"type": type(result).__name__, "message": str(result)}}
    if celery_state in ("STARTED", "RETRY"):
        return {**out, "status": "running"}
    later = _verifications_since(rt, backup_id, accepted.at)  # PENDING: still queued, or its result has expired
    if later:
        v = later[0]
        return {**out, "status": "verified" if v.ok else "failed", "ok": v.ok, "check": v.check}
    return {**out, "status": "queued"}


def _verifications_since(rt: Runtime, backup_id: str, at):
    return [v for v in rt.catalog.verifications(backup_id) if v.at >= at]


def _celery(job_id: str):
    try:
        result = AsyncResult(job_id, app=app)
        return result.state, result.result
    except Exception:  # noqa: BLE001 - result backend down: fall back to the catalog's history
        return None, None
