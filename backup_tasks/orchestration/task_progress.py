"""A stage task's progress as Celery state: what Flower, the client and ``backupctl backup --wait`` see.

Each report (counting.KEYS: backup_id, target, stage, bytes_done, bytes_total) goes, at
most once per ``PROGRESS_INTERVAL_SECONDS`` and at the start of every stage, to:

- the stage task's own state, ``PROGRESS`` with the report as meta (``AsyncResult(stage id)``,
  Flower's ``/api/task/result/<id>``);
- the run's state: the run id is the id of the chain's last task (Celery freezes the
  replacing chain with the start task's id), so ``AsyncResult(run id)`` reads ``PROGRESS``
  with the latest report until verify finishes; ``client.Run.progress()`` reads it there;
- a ``task-progress`` event, which Flower's live view turns into the state ``PROGRESS``,
  with a readable line ("compress 12.0 MiB of 48.0 MiB (25%)") in its Result column;
- in-process listeners (counting.listening), for the embedded default.

Reports are written synchronously from the stage (the chain is waiting on the same Redis
anyway), so none can land after the stage stored its result. A failed report is logged,
never raised.
"""

from __future__ import annotations

from backup_tasks.stages import counting
from backup_tasks.units import human_size

PROGRESS = "PROGRESS"


def reporter(task, ref: dict, *, for_run: bool = True) -> counting.Throttled:
    """The ``progress`` callback for one run of a stage task (``for_run``: also on the run id)."""
    run_id = ref["backup_id"]
    # Taken now, in the task's own thread: Celery's request is thread-local, and a stream
    # filter may report from a thread of its own (re-encryption counts the bytes that its
    # age decryption thread reads), where ``task.request`` is empty.
    request = task.request
    task_id, eager, hostname = request.id, request.is_eager, request.hostname

    def publish(report: dict) -> None:
        counting.notify_local(report)
        if eager or not task_id:
            return
        task.backend.store_result(task_id, report, PROGRESS, request=request)
        if for_run and task_id != run_id:
            task.backend.store_result(run_id, report, PROGRESS)
        with task.app.events.default_dispatcher(hostname=hostname) as events:  # Task.send_event, for this task id
            events.send("task-progress", uuid=task_id, retry=False, result=readable(report), **report)

    return counting.Throttled(publish, backup_id=run_id, target=ref["target"])


def readable(report: dict) -> str:
    """One line for people: ``compress 12.0 MiB of 48.0 MiB (25%)``."""
    done, total = report["bytes_done"], report["bytes_total"]
    if total:
        return f"{report['stage']} {human_size(done)} of {human_size(total)} ({100 * done // total}%)"
    return f"{report['stage']} {human_size(done)}"
