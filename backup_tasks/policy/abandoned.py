"""Which running runs lost their worker: a pure decision from their last heartbeats and the clock.

A run's stage beats while it executes (``working``); between stages it is handed on
(not working) and waits in its host's queue for as long as that takes, which proves
nothing either way, so only a silent *working* stage counts. Its worker is gone once the
silence outlasts the timeout: the beats come every few seconds, so a timeout of ten of
them is a dead process, not a slow one.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Iterable


def abandoned(beats: Iterable[tuple[str, bool, datetime]], now: datetime, *, timeout: timedelta) -> list[str]:
    """Run ids whose stage was working and has not beaten for longer than ``timeout``, in the order given.

    ``beats`` holds (run id, working, time of its last beat) for runs that are running.
    """
    return [run_id for run_id, working, beat_at in beats if working and now - beat_at > timeout]
