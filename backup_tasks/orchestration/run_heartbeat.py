"""A running stage's proof of life: its process beats in the catalog while the stage works.

``beating`` wraps a stage: a beat (working) when it starts, one every
``RUN_HEARTBEAT_SECONDS`` (or a fifth of ``run_heartbeat_timeout``, if shorter) from a
thread of the stage's own process, and a last one (not working: handed on to the next
stage's message, or to a retry) when it ends, however it ends. Only the death of the
process stops the beats without that last one, which is what ops/abandoned.py looks
for. A beat that cannot be written (the catalog is briefly away) is logged and the stage
goes on: the timeout spans ten beats.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from typing import Iterator

from backup_tasks.orchestration.ticking import ticking
from backup_tasks.defaults import RUN_HEARTBEAT_SECONDS

log = logging.getLogger(__name__)


def interval(settings) -> float:
    return max(0.2, min(RUN_HEARTBEAT_SECONDS, settings.run_heartbeat_timeout / 5))


def beat(rt, ref: dict, stage: str, *, working: bool) -> None:
    """One beat for the run of ``ref``; logged, never raised, when the catalog cannot take it."""
    try:
        rt.catalog.beat(ref["backup_id"], target=ref["target"], stage=stage, working=working, worker=socket.gethostname(),
                        pid=os.getpid())
    except Exception:  # noqa: BLE001 - a missed beat is not worth failing the stage for
        log.warning("could not record the heartbeat of run %s", ref["backup_id"], exc_info=True)


@contextlib.contextmanager
def beating(rt, ref: dict, stage: str) -> Iterator[None]:
    try:
        with ticking(interval(rt.settings), lambda: beat(rt, ref, stage, working=True), name=f"heartbeat-{ref['backup_id']}"):
            yield
    finally:
        beat(rt, ref, stage, working=False)
