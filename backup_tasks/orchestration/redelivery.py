"""A run's messages may arrive twice; the second copy must do no harm.

Redis delivers at least once. A worker that dies after ``backup.start`` sent its chain
but before the start was acknowledged gets the start redelivered, which would send a
second chain for the same run id; a visibility timeout that expires under a slow stage
hands that stage to a second worker. Left alone, the copy would race the original on the
same staging files, or, arriving after the run finished, dump again and overwrite the
stored, verified backup under the same id.

So a run's catalog row and its staging directory decide: a start for a run that is
already under way or over sends nothing, and a stage runs only while its run is
``running`` and its own output is not sealed yet, one copy at a time (an flock in the
run's staging directory). A copy that finds the seal, or the run over, stops quietly: the
original sent the next stage when its output started, and recorded the run's outcome, or
will. The row's stage does not decide, because stages overlap: the dump may be
redelivered while its follower already set the row to ``compress``. One exception: an
upload redelivered after it committed (the worker died between the catalog's
``uploaded`` and the ack) must go on, to hand the committed manifest to verify.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from typing import Iterator

from backup_tasks.ops import staging
from backup_tasks.ops.backup import cleanup_staging
from backup_tasks.records.catalog import QUEUED, Status

log = logging.getLogger(__name__)


class RunAlreadyUnderWay(Exception):
    """This message is a copy: its run is past the point the message would start."""

    def __init__(self, backup_id: str, status: str, stage: str | None) -> None:
        super().__init__(f"run {backup_id} is already {status} (stage {stage}): this delivery is a duplicate")
        self.status, self.stage = status, stage


def check_start(rt, backup_id: str) -> None:
    """Raise RunAlreadyUnderWay if the run was recorded and its chain has begun or ended.

    A recorded run still ``queued`` may or may not have had its chain sent (the worker
    died in between): it is sent, and any copy is made harmless by :func:`stage_slot`.
    """
    row = rt.catalog.find(backup_id)
    if row is not None and (row.status != Status.RUNNING or (row.stage or QUEUED) != QUEUED):
        raise RunAlreadyUnderWay(backup_id, row.status, row.stage)


@contextlib.contextmanager
def stage_slot(rt, backup_id: str, stage: str) -> Iterator:
    """Hold the run's ``stage`` exclusively while it works (giving the run's row); RunAlreadyUnderWay for a late copy.

    The row is read once the lock is held: the original may have moved on while this
    copy waited. (One catalog read per stage; the fan-out benchmark counts it.)
    """
    run_dir = rt.run_dir(backup_id)
    fd = os.open(run_dir / f".{stage}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # released by the kernel if this process dies
        try:
            row = _require_current(rt, backup_id, stage)
        except RunAlreadyUnderWay as dup:
            if dup.status != Status.RUNNING:  # never while the original still works in this directory
                cleanup_staging(rt, backup_id)  # what this copy's run_dir() may have recreated
            raise
        yield row
    finally:
        os.close(fd)


def _require_current(rt, backup_id: str, stage: str):
    """The run's catalog row (None if the catalog does not know it), if this delivery may run the stage."""
    row = rt.catalog.find(backup_id)
    if row is not None:  # None: a catalog rebuilt meanwhile, nothing says this is a copy
        if stage == "upload" and row.status == Status.UPLOADED:
            return row  # upload finds its committed manifest and passes it on (see the module docstring)
        if row.status != Status.RUNNING:
            raise RunAlreadyUnderWay(backup_id, row.status, row.stage)
    if stage != "upload" and staging.find_ref(rt.run_dir(backup_id), stage) is not None:
        raise RunAlreadyUnderWay(backup_id, Status.RUNNING, f"{stage} sealed")
    return row
