"""Which running runs lost their worker: a pure decision from their last heartbeats and the clock.

A run's stage beats while it executes (``working``); between stages it is handed on
(not working) and waits in its host's queue for as long as that takes, which proves
nothing either way, so only a silent *working* stage counts. Its worker is gone once the
silence outlasts the timeout: the beats come every few seconds, so a timeout of ten of
them is a dead process, not a slow one. A run waiting past the timeout is only a
suspect (``waiting``): the broker, asked by the caller, says whether its message is gone.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Iterable


def abandoned(beats: Iterable[tuple[str, bool, datetime]], now: datetime, *, timeout: timedelta) -> list[str]:
    """Run ids whose stage was working and has not beaten for longer than ``timeout``, in the order given.

    ``beats`` holds (run id, working, time of its last beat) for runs that are running.
    """
    return [run_id for run_id, working, beat_at in beats if working and now - beat_at > timeout]


def waiting(beats: Iterable[tuple[str, bool, datetime]], now: datetime, *, timeout: timedelta) -> list[str]:
    """Run ids handed on to their next stage's message longer than ``timeout`` ago, in the order given.

    Abandoned only if that message is gone from the broker, which this module cannot see.
    """
    return [run_id for run_id, working, beat_at in beats if not working and now - beat_at > timeout]
