"""Celery tasks: thin, named, and passing only small JSON references.

Each task parses a reference, calls the domain function in pipeline.py / verify.py and
returns a reference. Arguments are target names and run ids, never secrets: workers
resolve credentials themselves. A failure anywhere runs ``StageTask.on_failure``, the
chain's error callback: it records the failed run with its reason, removes the run's
staging files and emits an event.
"""

from __future__ import annotations

import logging

from celery import Task, chain
from celery.result import allow_join_result

from backup_tasks import pipeline, routing, runtime
from backup_tasks.celery_app import app
from backup_tasks.defaults import TASK_MAX_RETRIES, TASK_RETRY_BACKOFF_MAX
from backup_tasks.errors import TransientError, VerificationFailed
from backup_tasks.verify import verify_backup

log = logging.getLogger(__name__)


class StageTask(Task):
    """Idempotent stage: safe to redeliver, retried only for transient errors."""

    acks_late = True
    reject_on_worker_lost = True
    autoretry_for = (TransientError,)
    retry_backoff = True
    retry_backoff_max = TASK_RETRY_BACKOFF_MAX
    retry_jitter = True
    max_retries = TASK_MAX_RETRIES

    def on_failure(self, exc, task_id, args, kwargs, einfo):
        ref = args[0] if args and isinstance(args[0], dict) else {}
        backup_id = ref.get("backup_id") or (args[0] if self.name == "backup.verify" and args else task_id)
        target = ref.get("target") or (args[0] if self.name == "backup.start" and args else None)
        if isinstance(exc, VerificationFailed):
            return  # verify_backup recorded the failed check and emitted its event
        try:
            pipeline.fail(runtime.current(), backup_id, target, self.name.split(".")[-1], exc)
        except Exception:  # noqa: BLE001 - never mask the stage's own error
            log.exception("error callback for %s failed", backup_id)


def chain_for(target, ref: dict):
    """dump → compress → encrypt → upload on the target's host queue, then verify."""
    queue = target.queue
    return chain(
        dump.si(ref).set(queue=queue),
        compress.s().set(queue=queue),
        encrypt.s().set(queue=queue),
        upload.s().set(queue=queue),
        verify.s().set(queue=routing.VERIFY_QUEUE),
    )


@app.task(bind=True, base=StageTask, name="backup.start")
def start(self, target: str, type: str = "full", actor: str = ""):
    """Record the run (its id is this task's id) and replace this task with the chain."""
    rt = runtime.current()
    ref = pipeline.start(rt, self.request.id, target, type, actor=actor)
    if self.request.is_eager:
        # Embedded default: the very same tasks, run in order in this process. Celery denies
        # joins inside an eager task (and its own eager replace() trips on that), hence the guard.
        # The failing stage already retried and recorded the failure; letting its error out
        # here would autoretry *this* task, re-running the whole chain max_retries more times.
        # (chain.apply() raises when a middle stage failed, and returns a failed result when the last did.)
        try:
            with allow_join_result():
                result = chain_for(rt.target(target), ref).apply()
                if not result.failed():
                    return result.get()
                error = result.result
        except Exception as exc:  # noqa: BLE001 - recorded by the stage's on_failure
            error = exc
        return {**ref, "stage": "failed", "error_type": error.__class__.__name__}
    raise self.replace(chain_for(rt.target(target), ref))


def _stage(name: str, work):
    """A chain stage task: a reference in, the domain function, a reference out."""

    def run(ref: dict) -> dict:
        return work(runtime.current(), ref)

    run.__name__ = run.__qualname__ = name
    run.__doc__ = work.__doc__
    return app.task(base=StageTask, name=f"backup.{name}")(run)


dump = _stage("dump", pipeline.dump)
compress = _stage("compress", pipeline.compress)
encrypt = _stage("encrypt", pipeline.encrypt)
upload = _stage("upload", pipeline.upload)


@app.task(base=StageTask, name="backup.verify")
def verify(ref) -> dict:
    """Full verification by id (a string) or after upload (its reference)."""
    backup_id = ref["backup_id"] if isinstance(ref, dict) else ref
    return verify_backup(runtime.current(), backup_id)


@app.task(name="backup.drill", acks_late=True, reject_on_worker_lost=True)
def drill(target: str, actor: str = "beat") -> dict:
    """Restore drill of the target's latest verified backup, on the ``drill`` queue (see drill.py).

    Returns the recorded drill; a failed drill is a result (recorded, event emitted), not
    an exception. Redelivery after a worker died starts a new drill, whose sweep drops
    the dead one's temporary database.
    """
    from backup_tasks.drill import run_drill

    return run_drill(runtime.current(), target, actor=actor)


@app.task(name="backup.cleanup", acks_late=True, reject_on_worker_lost=True)
def cleanup(target: str | None = None, dry_run: bool = False, actor: str = "beat") -> dict:
    """Apply retention and remove debris (cleanup.py), on the ``maintenance`` queue.

    Idempotent: a redelivered cleanup re-plans from the catalog and finishes what an
    interrupted one started. Returns counts and ids only (the full plan is in the CLI).
    """
    from backup_tasks.cleanup import run_cleanup

    report = run_cleanup(runtime.current(), target, dry_run=dry_run, actor=actor)
    return {"target": target, "dry_run": dry_run, "now": report["now"], "kept": report["keep"],
            "removed": [{"backup_id": r["backup_id"], "tier": r["tier"]} for r in report["removed"]],
            "deleted_backups": report["deleted_backups"], "debris": len(report["debris"]),
            "refused": len(report["refused"]), "errors": [{k: e.get(k) for k in ("backup_id", "tier", "type", "message")}
                                                          for e in report["errors"]]}
