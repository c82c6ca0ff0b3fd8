"""Every task's boundary: what leaves a task as its failure is redacted.

Celery stores the exception a task raises (its type and message, and a traceback) in
the result backend, and its worker logs it. Our own errors mask secrets when they are
made (errors.BackupError), but an exception from a library or a bug (a ValueError
quoting a tool's output, an OSError naming a path) carries whatever text it was given.
The app's task class therefore replaces such an exception, as it leaves the task, by an
``UnexpectedError`` holding its type name and its redacted message; the original is
logged first with its traceback, which the worker's log filter redacts. Celery's own
control-flow exceptions (retry, ignore, reject) and our errors pass unchanged, so
retrying still happens for transient errors only.
"""

from __future__ import annotations

import logging

from celery import Task
from celery.exceptions import Ignore, Reject, Retry

from backup_tasks.errors import BackupError, UnexpectedError

log = logging.getLogger(__name__)

#: leave a task as they are: ours are redacted already, Celery's steer the task's state
PASSED = (BackupError, Retry, Ignore, Reject)


class RedactingTask(Task):
    """The app's task class (``task_cls``): a failure that is not ours leaves the task redacted."""

    def __call__(self, *args, **kwargs):
        try:
            return super().__call__(*args, **kwargs)
        except PASSED:
            raise
        except Exception as exc:
            log.error("task %s[%s] raised %s, not a typed error (a bug, or a failure nobody classified yet)",
                      self.name, self.request.id, type(exc).__name__, exc_info=True)
            raise UnexpectedError(f"{type(exc).__name__}: {exc}",
                                  "this is a bug or an unclassified failure; the worker's log has its traceback") from None
