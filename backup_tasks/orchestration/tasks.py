"""Celery tasks: thin, named, and passing only small JSON references.

Each task parses a reference, calls the domain function in backup.py / verify.py and
returns a reference. Arguments are target names and run ids, never secrets: workers
resolve credentials themselves. A failure anywhere runs ``StageTask.on_failure``, the
chain's error callback: it records the failed run with its reason, removes the run's
staging files, frees the target's run lock and emits an event.

What a running stage adds around its domain function (``_stage``): the target's run
lock is kept alive (run_lock.py), its process beats in the catalog so that its death is
noticed (run_heartbeat.py, ops/abandoned.py), progress is published as the ``PROGRESS``
state (task_progress.py), and a soft time limit becomes a clear failure. Flower shows each
stage with the target name as its argument and the run id as ``run``.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone

from celery import Task, chain, signature
from celery.exceptions import Ignore, SoftTimeLimitExceeded
from celery.result import allow_join_result

from backup_tasks.orchestration import (config_reload, embedded_pipeline, queued_messages, redelivery, routing,
                                        run_heartbeat, run_lock, task_progress)
from backup_tasks.ops import abandoned, backup, following, runtime
from backup_tasks.orchestration.celery_app import app
from backup_tasks.orchestration.task_boundary import RedactingTask
from backup_tasks.defaults import (REENCRYPT_PRIORITY, STAGES, TASK_MAX_RETRIES, TASK_RETRY_BACKOFF_MAX,
                                   VERIFY_PENDING_GRACE_SECONDS)
from backup_tasks.errors import PermanentError, TransientError, VerificationFailed
from backup_tasks.ops.verify import verify_backup
from backup_tasks.records.catalog import Status

log = logging.getLogger(__name__)


def _runtime(task: Task):
    """The worker's runtime, re-read if the targets file changed; the caller's own when eager."""
    return runtime.current() if task.request.is_eager else config_reload.fresh()


class StageTask(RedactingTask):
    """Idempotent stage: safe to redeliver, retried only for transient errors.

    Retries: exponential backoff with full jitter (a random delay between 0 and
    2**retries seconds, capped at ``task_retry_backoff_max``), at most
    ``task_max_retries`` times; both come from [settings] through the app's config.
    Anything else (PermanentError, a bug) fails the run at once.
    """

    acks_late = True
    reject_on_worker_lost = True
    autoretry_for = (TransientError,)
    retry_backoff = True
    retry_jitter = True

    @property
    def max_retries(self) -> int:
        return self.app.conf.get("backup_task_max_retries", TASK_MAX_RETRIES)

    @property
    def retry_backoff_max(self) -> int:
        return self.app.conf.get("backup_task_retry_backoff_max", TASK_RETRY_BACKOFF_MAX)

    def on_failure(self, exc, task_id, args, kwargs, einfo):
        ref = args[0] if args and isinstance(args[0], dict) else {}
        backup_id = ref.get("backup_id") or (args[0] if self.name == "backup.verify" and args else task_id)
        target = ref.get("target") or (args[0] if self.name == "backup.start" and args else None)
        if isinstance(exc, VerificationFailed):
            return  # verify_backup recorded the failed check and emitted its event
        try:
            rt = _runtime(self)
            backup.fail(rt, backup_id, target, self.name.split(".")[-1], exc)
        except Exception:  # noqa: BLE001 - never mask the stage's own error
            log.exception("error callback for %s failed", backup_id)
            return
        if target and self.name != "backup.verify" and not self.request.is_eager:
            try:  # the run is over: the next run of this target may start
                run_lock.for_target(rt.settings, target).release(backup_id)
            except Exception:  # noqa: BLE001 - the lock's TTL frees it anyway
                log.warning("could not release the run lock of %s", target, exc_info=True)


def chain_for(rt, target, ref: dict):
    """The run's stages in the chain's order (``defaults.STAGES``): each on the target's host queue, but verify.

    The first stage takes the start's reference, each later one its predecessor's result.
    Each signature carries its stage's time limits and, for Flower, the target name as
    its only argument (``argsrepr``) with the run id beside it.
    """
    shown = {"argsrepr": repr((target.name,)), "kwargsrepr": repr({"run": ref["backup_id"]})}

    def signature(n: int, stage: str):
        task = app.tasks[f"backup.{stage}"]
        soft, hard = rt.settings.time_limits(stage)
        # verify reads the stored copies, not the host's staging files: any verify worker may take it
        queue = routing.VERIFY_QUEUE if stage == "verify" else target.queue
        return (task.s() if n else task.si(ref)).set(queue=queue, soft_time_limit=soft, time_limit=hard, **shown)

    return chain(*(signature(n, stage) for n, stage in enumerate(STAGES)))


@app.task(bind=True, base=StageTask, name="backup.start")
def start(self, target: str, type: str = "full", actor: str = "", rehash: bool = False):
    """Take the target's run lock (or skip), record the run (its id is this task's id), replace this task with the chain."""
    rt = _runtime(self)
    backup_id = self.request.id
    spec = rt.target(target)  # an unknown target fails here, before anything is locked
    try:
        redelivery.check_start(rt, backup_id)  # before the lock: a finished run must not be "skipped"
    except redelivery.RunAlreadyUnderWay as dup:
        _drop_duplicate(dup)
    lock = run_lock.for_target(rt.settings, target)
    holder = lock.acquire(backup_id)
    if holder is not None and not self.request.is_eager and \
            abandoned.is_over(rt, holder, release_lock=run_lock.releaser(rt.settings), has_message=queued_messages.finder(rt)):
        holder = lock.take_over(holder, backup_id)  # the holder ended without freeing it, or its worker died
    if holder is not None:
        return run_lock.skip(rt, backup_id, target, type, holder=holder, actor=actor)
    try:
        if not self.request.is_eager:
            abandoned.sweep_staging(rt)  # what runs reaped elsewhere left on this host
        ref = backup.start(rt, backup_id, target, type, actor=actor, rehash=rehash)
        run_heartbeat.beat(rt, ref, "start", working=False)  # recorded; its first stage waits in the queue
        if not self.request.is_eager:
            lock.hand_over(backup_id)  # the dump may wait in the host's queue behind other targets' chains
            raise self.replace(chain_for(rt, spec, ref))
    except BaseException as exc:
        if not _is_replace(exc):
            lock.release(backup_id)
        raise
    # Embedded default: the very same tasks, in this process under the file lock, overlapping
    # in threads (embedded_pipeline.py). Celery denies joins inside an eager task (and an eager
    # retry joins), hence the guard. The failing stage already retried and recorded the failure;
    # letting its error out here would autoretry *this* task, re-running the whole chain
    # max_retries more times.
    try:
        with allow_join_result():
            pipeline = embedded_pipeline.Pipeline(list(chain_for(rt, spec, ref).tasks))
            result = pipeline.run(ref)
        if pipeline.error is None and result is not None:
            return result
        error = pipeline.error
        if error is None:  # every stage stopped quietly and none failed: say so, never leave the run "running"
            error = PermanentError(f"the chain of run {backup_id} stopped without a result",
                                   "see the worker's log (a stage's input was never sealed), then run the backup again")
            backup.fail(rt, backup_id, target, "chain", error)
    except Exception as exc:  # noqa: BLE001 - recorded by the stage's on_failure
        error = exc
    finally:
        lock.release(backup_id)
    return {**ref, "stage": "failed", "error_type": error.__class__.__name__}


def _drop_duplicate(dup: redelivery.RunAlreadyUnderWay):
    """End a duplicate delivery without a result: the run id's result is the original chain's."""
    log.warning("%s; ignored", dup)
    raise Ignore()


def _is_replace(exc: BaseException) -> bool:
    return isinstance(exc, Ignore)  # replace() raises Ignore once the chain is sent: the run goes on


class _Forward:
    """Send the next stage of the chain now, with a reference to this stage's output as it is written.

    Celery would send it when this stage returns; sending it as soon as the output has
    started lets the stages overlap, each still its own task. It is only ever sent by a
    stage that is running, so no worker slot waits for a stage that has not started; with
    one slot it simply runs after this one. The rest of the chain travels with it, and
    this stage's own ``request.chain`` is cleared once it returns (``settle``), so Celery
    does not send the next stage a second time. A retry of this stage keeps the chain and
    sends a follower of its own new attempt.
    """

    def __init__(self, task: Task) -> None:
        self.task, self.sent = task, False

    def __call__(self, ref: dict) -> None:
        rest = list(self.task.request.chain or ())
        if not rest:
            return
        following = signature(rest.pop(), app=app)
        following.apply_async((ref,), chain=rest, parent_id=self.task.request.id, root_id=self.task.request.root_id)
        self.sent = True

    def settle(self) -> None:
        if self.sent:
            self.task.request.chain = None


def _stage(name: str, work):
    """A chain stage task: a reference in, the domain function, a reference out."""
    overlaps = name in OVERLAPPING

    def run(self, ref: dict) -> dict:
        rt = _runtime(self)
        lock = run_lock.for_target(rt.settings, ref["target"])
        if not overlaps:
            forward = None
        elif self.request.is_eager:
            forward = embedded_pipeline.forwarder()  # None when a stage is applied on its own
        else:
            forward = _Forward(self) if self.request.chain else None
        try:
            with redelivery.stage_slot(rt, ref["backup_id"], name) as row:
                if name != STAGES[0] and not (row is not None and row.status == Status.UPLOADED):
                    following.check_producer(rt.run_dir(ref["backup_id"]), ref, name)
                with lock.kept_alive(ref["backup_id"]), run_heartbeat.beating(rt, ref, name):
                    result = work(rt, ref, progress=task_progress.reporter(self, ref),
                                  **({"forward": forward} if overlaps else {}))
        except redelivery.RunAlreadyUnderWay as dup:
            _drop_duplicate(dup)
        except following.ProducerGone as gone:
            # The input will never be sealed: a new attempt of the producer sends its own
            # follower, or the producer failed and failed the run. Nothing to record here.
            log.info("%s", gone)
            raise Ignore() from None
        except SoftTimeLimitExceeded:
            soft, _ = rt.settings.time_limits(name)
            raise PermanentError(f"{name} of run {ref['backup_id']} exceeded its soft time limit of {soft}s",
                                 f"raise stage_soft_time_limits.{name} (and stage_hard_time_limits.{name}) in [settings]") from None
        if isinstance(forward, _Forward):
            forward.settle()
        if name == "upload" and not self.request.is_eager:
            try:  # stored and committed: the next run of this target may start
                lock.release(ref["backup_id"])
            except Exception:  # noqa: BLE001 - Redis away: the committed upload stands; the next start sees this run is over
                log.warning("could not release the run lock of %s after its upload", ref["target"], exc_info=True)
        return result

    run.__name__ = run.__qualname__ = name
    run.__doc__ = work.__doc__
    return app.task(bind=True, base=StageTask, name=f"backup.{name}")(run)


#: the stages whose output the next stage follows while it is written (upload's successor, verify, reads the tier)
OVERLAPPING = STAGES[:STAGES.index("upload")]

dump = _stage("dump", backup.dump)
compress = _stage("compress", backup.compress)
encrypt = _stage("encrypt", backup.encrypt)
upload = _stage("upload", backup.upload)


@app.task(bind=True, base=StageTask, name="backup.verify")
def verify(self, ref) -> dict:
    """Full verification by id (a string) or after upload (its reference)."""
    rt = _runtime(self)
    backup_id = ref["backup_id"] if isinstance(ref, dict) else ref
    target = ref["target"] if isinstance(ref, dict) else rt.catalog.get(backup_id).target
    # Only the chain's own verify speaks for the run; a later re-verification reports on its own task.
    report = task_progress.reporter(self, {"backup_id": backup_id, "target": target}, for_run=isinstance(ref, dict))
    try:
        return verify_backup(rt, backup_id, progress=report)
    except SoftTimeLimitExceeded:
        soft, _ = rt.settings.time_limits("verify")
        raise PermanentError(f"verify of {backup_id} exceeded its soft time limit of {soft}s",
                             "raise stage_soft_time_limits.verify (and stage_hard_time_limits.verify) in [settings]") from None


@app.task(bind=True, name="backup.reencrypt", acks_late=True, reject_on_worker_lost=True)
def reencrypt(self, backup_id: str, from_key: str | None = None, actor: str = "beat") -> dict:
    """Move one backup onto the current recipients (keys/reencrypt.py), on the ``verify`` queue where the identities are.

    Redelivery after a worker died is safe: the use case finishes or redoes what the dead
    one started. Returns the backup's outcome; a failure is an outcome, not an exception.
    """
    from backup_tasks.ops.keys.reencrypt import reencrypt_backup

    rt = _runtime(self)
    target = rt.catalog.get(backup_id).target
    report = task_progress.reporter(self, {"backup_id": backup_id, "target": target}, for_run=False)
    task_id = self.request.id or backup_id
    lock = run_lock.for_reencryption(rt.settings, backup_id)
    holder = lock.acquire(task_id)  # a redelivery of this very task finds the lock its own
    if holder is not None:
        return {"backup_id": backup_id, "target": target, "outcome": "skipped",
                "reason": f"another re-encryption of this backup is running (task {holder}); run backupctl reencrypt again later"}
    try:
        with lock.kept_alive(task_id):
            return reencrypt_backup(rt, backup_id, from_key=from_key, actor=actor, progress=report)
    finally:
        lock.release(task_id)


@app.task(bind=True, name="backup.drill", acks_late=True, reject_on_worker_lost=True)
def drill(self, target: str, actor: str = "beat") -> dict:
    """Restore drill of the target's latest verified backup, on the ``drill`` queue (see drill.py).

    Returns the recorded drill; a failed drill is a result (recorded, event emitted), not
    an exception. Redelivery after a worker died starts a new drill, whose sweep drops
    the dead one's temporary database.
    """
    from backup_tasks.ops.drills import run_drill  # imported where it runs: a backup's start-up does without it

    return run_drill(_runtime(self), target, actor=actor)


@app.task(bind=True, name="backup.cleanup", acks_late=True, reject_on_worker_lost=True)
def cleanup(self, target: str | None = None, dry_run: bool = False, actor: str = "beat") -> dict:
    """Apply retention and remove debris (cleanup.py), on the ``maintenance`` queue.

    Idempotent: a redelivered cleanup re-plans from the catalog and finishes what an
    interrupted one started. Returns counts and ids only (the full plan is in the CLI).
    """
    from backup_tasks.ops.cleanup import run_cleanup  # imported where it runs: a backup's start-up does without it

    report = run_cleanup(_runtime(self), target, dry_run=dry_run, actor=actor)
    return {"target": target, "dry_run": dry_run, "now": report["now"], "kept": report["keep"],
            "removed": [{"backup_id": r["backup_id"], "tier": r["tier"]} for r in report["removed"]],
            "deleted_backups": report["deleted_backups"], "debris": len(report["debris"]),
            "binlogs_removed": len(report.get("binlogs_removed", [])),
            "refused": len(report["refused"]), "errors": [{k: e.get(k) for k in ("backup_id", "tier", "type", "message")}
                                                          for e in report["errors"]]}


# -- beat's global jobs that fan out (beat_schedule.py) ------------------------------------------


@app.task(bind=True, name="backup.verify_pending", acks_late=True, reject_on_worker_lost=True)
def verify_pending(self, grace_seconds: float = VERIFY_PENDING_GRACE_SECONDS) -> dict:
    """Enqueue a verify for every backup still ``uploaded`` well after its upload (reverify.py)."""
    from backup_tasks.policy.reverify import pending_verification

    rt = _runtime(self)
    rows = rt.catalog.list(status=Status.UPLOADED)
    ids = pending_verification([(r.id, r.finished_at) for r in rows], _now(), grace=timedelta(seconds=grace_seconds))
    for backup_id in ids:
        verify.apply_async(args=(backup_id,), queue=routing.VERIFY_QUEUE)
    return {"enqueued": ids}


@app.task(bind=True, name="backup.reverify", acks_late=True, reject_on_worker_lost=True)
def reverify(self, every_hours: float = 24.0) -> dict:
    """Enqueue full re-reads of the backups verified longest ago, so none waits more than reverify_days."""
    from backup_tasks.policy.reverify import plan_reverify

    rt = _runtime(self)
    rows = rt.catalog.list(status=Status.VERIFIED)
    ids = plan_reverify([(r.id, r.verified_at or r.created_at) for r in rows], _now(), days=rt.settings.reverify_days,
                        every=timedelta(hours=every_hours))
    for backup_id in ids:
        verify.apply_async(args=(backup_id,), queue=routing.VERIFY_QUEUE)
    return {"enqueued": ids, "stored": len(rows), "reverify_days": rt.settings.reverify_days}


@app.task(bind=True, name="backup.reencrypt_unlocked", acks_late=True, reject_on_worker_lost=True)
def reencrypt_unlocked(self) -> dict:
    """Daily: send ``backup.reencrypt`` again for each backup an Object Lock held back whose lock has ended (keys/reencrypt_retry.py)."""
    from backup_tasks.ops.keys import reencrypt_retry

    rt = _runtime(self)
    retries = reencrypt_retry.due(rt, _now())
    for retry in retries:
        reencrypt.apply_async(args=(retry["backup_id"], retry["from_key"], "beat"), queue=routing.VERIFY_QUEUE,
                              priority=REENCRYPT_PRIORITY)
    return {"enqueued": [r["backup_id"] for r in retries]}


@app.task(bind=True, name="backup.drill_due", acks_late=True, reject_on_worker_lost=True)
def drill_due(self) -> dict:
    """Weekly: one ``backup.drill`` on the ``drill`` queue per target that has a ``drill`` table."""
    rt = _runtime(self)
    names = sorted(t.name for t in rt.config.targets.values() if t.drill)
    for name in names:
        drill.apply_async(args=(name,), queue=routing.DRILL_QUEUE)
    return {"enqueued": names}


def _now() -> datetime:
    return datetime.now(timezone.utc)
