"""A run's states and the catalog's marker values, apart from the catalog's tables.

Apart so that a caller that only names a state (``backupctl list --status`` builds its
choices while the CLI starts, before any command runs) need not import SQLAlchemy;
``records.catalog`` re-exports all of them.
"""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    RUNNING = "running"
    UPLOADED = "uploaded"
    VERIFIED = "verified"
    FAILED = "failed"
    DELETED = "deleted"


FINAL = (Status.VERIFIED, Status.FAILED, Status.DELETED)

#: a run's stage before its chain's first stage, and once it is over; in between the
#: chain's own stage names, which the callers tell the catalog
QUEUED = "queued"
DONE = "done"

#: the actor of a run started without one: beat passes "beat", applications and the CLI name themselves,
#: so this is a task sent by hand (Flower's async-apply, celery call)
UNATTRIBUTED = "unattributed"
