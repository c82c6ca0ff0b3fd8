"""The audit log: who backed up, restored, deleted, cleaned up or touched keys, and how it ended.

Backups audit themselves in the catalog (a run's start and its final status are written
in the same transaction as the run), so a backup is audited whether beat, an
application or the CLI started it. Everything else an operator or a schedule does goes
through :func:`audited`. Writing the audit entry never raises: losing the catalog must
not turn a finished restore into an error, and the entry is logged either way.
"""

from __future__ import annotations

import getpass
import logging
import os
from contextlib import contextmanager
from typing import Iterator

from backup_tasks import redaction
from backup_tasks.errors import BackupError, InputError, RestoreRefused

log = logging.getLogger("backup_tasks.records.audit")

#: actor of work that beat scheduled
BEAT = "beat"

OK = "ok"
FAILED = "failed"
REFUSED = "refused"  # bad input or a safety refusal: nothing was changed
DEFERRED = "deferred"  # nothing was changed yet, and the work is due again later (e.g. after an Object Lock ends)


def cli_actor() -> str:
    """``cli:<user>``; BACKUP_ACTOR overrides it, e.g. for a wrapper script that acts for someone."""
    return os.environ.get("BACKUP_ACTOR") or f"cli:{getpass.getuser()}"


def redact(text: str | None) -> str | None:
    """A URL or DSN as it may be audited: any password in it, and any secret this process resolved, replaced by ***."""
    return redaction.redact(text)


def record(catalog, action: str, *, actor: str, outcome: str, target: str | None = None, backup_id: str | None = None,
           detail: dict | None = None) -> None:
    log.info("audit %s by %s: %s target=%s backup=%s", action, actor, outcome, target, backup_id)
    try:
        catalog.add_audit(action, actor=actor, outcome=outcome, target=target, backup_id=backup_id, detail=detail)
    except Exception:  # noqa: BLE001 - see module docstring
        log.exception("could not write the audit entry for %s by %s", action, actor)


class Entry:
    """What the audited block fills in: its outcome (``ok`` unless it says otherwise) and details."""

    def __init__(self, detail: dict | None) -> None:
        self.outcome = OK
        self.detail = dict(detail or {})


@contextmanager
def audited(catalog, action: str, *, actor: str, target: str | None = None, backup_id: str | None = None,
            detail: dict | None = None) -> Iterator[Entry]:
    """Record ``action`` when the block ends: its own outcome, ``refused`` or ``failed`` with the error."""
    entry = Entry(detail)
    try:
        yield entry
    except SystemExit as exc:  # a command that printed its result and chose its exit code
        outcome = entry.outcome if not exc.code else (entry.outcome if entry.outcome != OK else FAILED)
        record(catalog, action, actor=actor, outcome=outcome, target=target, backup_id=backup_id, detail=entry.detail)
        raise
    except BaseException as exc:
        outcome = REFUSED if isinstance(exc, (InputError, RestoreRefused)) else FAILED
        if isinstance(exc, BackupError):
            entry.detail["error"] = exc.message  # our messages never carry secrets
        else:
            entry.detail["error"] = type(exc).__name__  # a foreign message might
        record(catalog, action, actor=actor, outcome=outcome, target=target, backup_id=backup_id, detail=entry.detail)
        raise
    record(catalog, action, actor=actor, outcome=entry.outcome, target=target, backup_id=backup_id, detail=entry.detail)


def dumps(row) -> dict:
    return {"id": row.id, "at": row.at.isoformat(), "action": row.action, "actor": row.actor, "outcome": row.outcome,
            "target": row.target, "backup_id": row.backup_id, "detail": row.detail}
