"""Which stored backups to read back now: the ones left unverified, and the rolling re-verification.

A backup verified once can rot later (a bit flip on the disk, an object replaced in the
bucket). ``backup.reverify`` runs daily and re-reads, in full, the backups whose last
full verification is the oldest, so that every stored backup is re-read at least every
``reverify_days`` days, spreading the reads evenly over that period rather than in one
burst. ``backup.verify_pending`` picks up backups still ``uploaded`` (their chain's
verify never ran: no identity on the verify host, no verify worker, a crash).

Both only decide; the tasks enqueue one ``backup.verify`` per chosen id on the ``verify``
queue, where the workers holding the identities are. The decisions are pure functions
of plain data and the clock, tested as such.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Iterable


def plan_reverify(verified: Iterable[tuple[str, datetime]], now: datetime, *, days: int,
                  every: timedelta = timedelta(days=1)) -> list[str]:
    """Ids to re-read now, oldest verification first.

    ``verified`` holds (backup id, time of its last full verification); the plan runs
    every ``every``. It takes every backup that would pass ``days`` without a re-read
    before the next run, and then the oldest ones up to an even share. A backup must be
    re-read by the run before it turns ``days`` old, so the usable window is one run
    shorter than the period, and the share is ceil(n * every / (period - every)): the
    same few reads every day, with no burst when a cohort comes due.
    """
    period = timedelta(days=days)
    ordered = sorted(verified, key=lambda item: (item[1], item[0]))
    deadline = now + every - period  # last read at or before this: overdue by the next run
    due = [backup_id for backup_id, at in ordered if at <= deadline]
    window = period - every
    share = len(ordered) if window <= timedelta(0) else math.ceil(len(ordered) * every / window)
    rest = [backup_id for backup_id, at in ordered if at > deadline]
    return due + rest[:max(0, share - len(due))]


def pending_verification(uploaded: Iterable[tuple[str, datetime | None]], now: datetime, *, grace: timedelta) -> list[str]:
    """Backups still ``uploaded`` whose upload finished more than ``grace`` ago (their own verify may just be queued)."""
    return [backup_id for backup_id, finished in sorted(uploaded, key=lambda item: item[0])
            if finished is not None and finished <= now - grace]
