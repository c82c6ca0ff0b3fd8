"""The Python API for applications: enqueue a backup, then poll or wait for it.

    from backup_tasks import client
    run = client.enqueue_backup("uploads")          # before a risky migration
    run.progress()                                  # {"stage": "compress", "bytes_done": ..., "bytes_total": ...} or None
    result = run.wait(timeout=3600, on_progress=print)  # raises BackupFailed if it failed

The run id is the Celery task id of ``backup.start``, so the same id is found in Flower,
in the catalog and in storage. Only the target name travels; the worker looks up
everything else, credentials included. Status comes from the catalog (the record that
lasts); progress from the Celery result backend, where the running stage publishes its
``PROGRESS`` state (task_progress.py). Applications that do not speak Python enqueue
through Flower's HTTP API instead (README: Running distributed).
"""

from __future__ import annotations

import getpass
import logging
import os
import time
from typing import Callable

from celery.result import AsyncResult, denied_join_result
from kombu.exceptions import OperationalError
from kombu.utils.url import maybe_sanitize_url

from backup_tasks import defaults
from backup_tasks.ops import backup, runtime
from backup_tasks.ops.backup import AFTER_UPLOAD
from backup_tasks.records.catalog import FINAL, QUEUED, Status, dumps_row
from backup_tasks.orchestration.celery_app import app, configure
from backup_tasks.orchestration.consumers import consumers
from backup_tasks.orchestration.routing import VERIFY_QUEUE
from backup_tasks.orchestration.tasks import start
from backup_tasks.errors import BackupError, InputError, ServiceUnavailable
from backup_tasks.stages.counting import KEYS

log = logging.getLogger(__name__)


class BackupFailed(BackupError):
    """The run ended failed; the message carries the catalog's reason."""


class Run:
    """A handle on one backup run; cheap to create from an id alone."""

    def __init__(self, backup_id: str, rt: runtime.Runtime | None = None) -> None:
        self.id = backup_id
        self._rt = rt or runtime.current()

    def __repr__(self) -> str:
        return f"Run({self.id!r})"

    def info(self) -> dict:
        """The catalog entry, or a 'queued' stub while no worker has picked the run up yet."""
        row = self._rt.catalog.find(self.id)
        if row is None:  # sent by something that does not record (Flower's HTTP API); no worker has it yet
            return {"id": self.id, "status": Status.RUNNING, "stage": "queued"}
        note = (row.manifest or {}).get("note")  # e.g. an incremental that ran as a full, and why
        return {**dumps_row(row), "stage": row.stage, **({"note": note} if note else {})}

    def status(self) -> str:
        return self.info()["status"]

    def progress(self) -> dict | None:
        """The running stage's latest PROGRESS report, or None (queued, finished, embedded, or Redis away).

        A dict with the keys backup_id, target, stage, bytes_done and bytes_total (None
        when the stage cannot know its size in advance, as a dump).
        """
        if self._rt.settings.embedded:
            return None
        if app.conf.broker_url != self._rt.settings.broker_url:
            configure(self._rt.settings)
        try:
            result = AsyncResult(self.id, app=app)
            state, meta = result.state, result.info
        except Exception:  # noqa: BLE001 - progress is best effort; status comes from the catalog
            log.debug("no progress for run %s from the result backend", self.id, exc_info=True)
            return None
        if state != "PROGRESS" or not isinstance(meta, dict):
            return None
        return {key: meta.get(key) for key in KEYS}

    def wait(self, timeout: float | None = None, *, on_progress: Callable[[dict], None] | None = None,
             poll: float = defaults.WAIT_POLL_SECONDS, on_no_worker: Callable[[str], None] | None = None) -> dict:
        """Block until the run is verified or failed; raise BackupFailed or TimeoutError otherwise.

        ``on_progress`` is called with each new progress dict (progress.KEYS plus
        ``status``): the running stage's PROGRESS reports, and the catalog's stage when it
        changes without one (``queued`` at first, ``done`` at the end). ``on_no_worker`` is
        called once per queue, with its name, when the run has waited
        ``defaults.NO_WORKER_CHECK_SECONDS`` for a queue no live worker consumes: its host's
        queue before the dump, ``verify`` after the upload.
        """
        started = time.monotonic()
        deadline = None if timeout is None else started + timeout
        last: dict | None = None
        watch = on_no_worker is not None and not self._rt.settings.embedded
        waiting: tuple[str | None, float] = (None, started)  # the queue the run waits on, and since when
        asked: set[str] = set()
        while True:
            info = self.info()
            if watch:
                queue = self._waiting_on(info)
                if queue != waiting[0]:
                    waiting = (queue, time.monotonic())
                elif queue and queue not in asked and time.monotonic() - waiting[1] >= defaults.NO_WORKER_CHECK_SECONDS:
                    asked.add(queue)
                    if consumers(queue) == []:  # None: the workers could not be asked, which says nothing about them
                        on_no_worker(queue)
            if on_progress:
                report = self._next_report(info, last)
                if report is not None:
                    on_progress(report)
                    last = report
            if info["status"] == Status.UPLOADED and info.get("error"):
                # Stored and signed, but verification could not run (e.g. no identity on the
                # verify host): the chain has ended; waiting longer would wait forever.
                raise BackupFailed(f"backup {self.id} is stored but not verified: {info['error']}",
                                   f"fix the cause, then run: backupctl verify {self.id}")
            if info["status"] in FINAL:
                if info["status"] != Status.VERIFIED:
                    raise BackupFailed(f"backup {self.id} {info['status']}: {info.get('error') or 'no reason recorded'}",
                                       "see backupctl show " + self.id)
                return info
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"backup {self.id} still {info['status']} ({info.get('stage')}) after {timeout}s")
            time.sleep(poll)


    def _waiting_on(self, info: dict) -> str | None:
        """The queue whose worker the run needs next, at the two points where it can wait on one."""
        if info["status"] == Status.RUNNING and info.get("stage") == QUEUED:
            try:
                return self._rt.target(info["target"]).queue
            except (BackupError, KeyError):  # a target no longer in this file: nothing to say about its queue
                return None
        if info["status"] == Status.UPLOADED and info.get("stage") == AFTER_UPLOAD and not info.get("error"):
            return VERIFY_QUEUE
        return None

    def _next_report(self, info: dict, last: dict | None) -> dict | None:
        running = info["status"] not in FINAL and not (info["status"] == Status.UPLOADED and info.get("error"))
        live = self.progress() if running else None
        if live is not None:
            report = {**live, "status": info["status"]}
        else:
            report = {"backup_id": self.id, "target": info.get("target"), "stage": info.get("stage"), "bytes_done": None,
                      "bytes_total": None, "status": info["status"]}
        if last is not None and report["stage"] == last["stage"] and (report["bytes_done"] is None
                                                                      or report["bytes_done"] == last["bytes_done"]):
            return None
        return report


def enqueue_backup(target: str, type: str = "full", *, actor: str | None = None, rt: runtime.Runtime | None = None,
                   rehash: bool = False) -> Run:
    """Send ``backup.start`` for ``target``; in the embedded default the chain has run when this returns.

    ``rehash``: an incremental reads every file and compares hashes instead of trusting metadata.
    """
    rt = rt or runtime.current()
    backup.check_type(rt.target(target), type)
    configure(rt.settings)

    backup_id = backup.new_backup_id(target)
    actor = actor or _actor()
    try:
        if not rt.settings.embedded:
            # Fail in seconds with exit code 3, not after kombu's and the result backend's long retries.
            with start.app.connection_for_write() as conn:
                conn.ensure_connection(max_retries=2, interval_start=0.2, interval_step=0.5)
            # Recorded now, so the run is in `backupctl list` while it waits for its worker.
            backup.record_run(rt, backup_id, target, type, actor=actor)
        # The queue from the caller's own runtime: an application may hold one it never installed.
        kwargs = {"actor": actor, **({"rehash": True} if rehash else {})}
        if rt.settings.embedded:
            # What apply_async does when eager, without first opening a producer on the in-memory
            # broker only to pick a serializer for these plain JSON arguments (its connection,
            # pool and transport modules cost ~5 ms before the dump can start).
            with denied_join_result():
                start.apply(args=(target, type), kwargs=kwargs, task_id=backup_id, queue=rt.target(target).queue)
        else:
            start.apply_async(args=(target, type), kwargs=kwargs, task_id=backup_id, queue=rt.target(target).queue)
    except (OperationalError, ConnectionError, RuntimeError) as exc:
        rt.catalog.fail_run(backup_id, f"not enqueued: broker unreachable ({exc.__class__.__name__})")
        raise ServiceUnavailable(f"cannot reach the broker at {_redact(rt.settings.broker_url)}: {exc}",
                                 "is Redis up? check BACKUP_BROKER_URL") from None
    return Run(backup_id, rt)


def recent_runs(target: str | None = None, limit: int = 20, *, rt: runtime.Runtime | None = None) -> list[dict]:
    rt = rt or runtime.current()
    if target:
        rt.target(target)
    return [dumps_row(row) for row in rt.catalog.list(target=target, limit=limit)]


def get_run(backup_id: str, *, rt: runtime.Runtime | None = None) -> Run:
    rt = rt or runtime.current()
    if rt.catalog.find(backup_id) is None:
        raise InputError(f"no run with id '{backup_id}'", "list runs with backupctl list")
    return Run(backup_id, rt)


def _actor() -> str:
    return os.environ.get("BACKUP_ACTOR") or f"app:{getpass.getuser()}"


def _redact(url: str | None) -> str:
    return maybe_sanitize_url(url or "")
