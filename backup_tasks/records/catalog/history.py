"""What happened: the event log (what the system noticed) and the audit log (who did what)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from backup_tasks.records.catalog.schema import AuditRow, EventRow
from backup_tasks.records.run_status import UNATTRIBUTED
from backup_tasks.timefmt import now


class History:
    """The catalog's events and audit tables."""

    _session: sessionmaker

    def add_event(self, *, kind: str, severity: str, message: str, target: str | None = None, host: str | None = None,
                  backup_id: str | None = None, detail: dict | None = None) -> None:
        with self._session.begin() as s:
            s.add(EventRow(at=now(), kind=kind, severity=severity, target=target, host=host, backup_id=backup_id,
                           message=message, detail=detail))

    def events(self, *, kind: str | None = None, backup_id: str | None = None) -> list[EventRow]:
        q = select(EventRow).order_by(EventRow.id)
        if kind:
            q = q.where(EventRow.kind == kind)
        if backup_id:
            q = q.where(EventRow.backup_id == backup_id)
        with self._session() as s:
            return list(s.scalars(q))

    def add_audit(self, action: str, *, actor: str, outcome: str, target: str | None = None, backup_id: str | None = None,
                  detail: dict | None = None) -> None:
        with self._session.begin() as s:
            s.add(audit_row(action, actor, outcome, target=target, backup_id=backup_id, detail=detail))

    def audit(self, *, since: datetime | None = None, action: str | None = None, target: str | None = None,
              limit: int | None = None) -> list[AuditRow]:
        """Newest first."""
        q = select(AuditRow).order_by(AuditRow.at.desc(), AuditRow.id.desc())
        if since:
            q = q.where(AuditRow.at >= since)
        if action:
            q = q.where(AuditRow.action == action)
        if target:
            q = q.where(AuditRow.target == target)
        if limit:
            q = q.limit(limit)
        with self._session() as s:
            return list(s.scalars(q))


def audit_row(action: str, actor: str, outcome: str, *, target: str | None, backup_id: str | None, detail: dict | None) -> AuditRow:
    """An audit entry to add in the caller's transaction, so a run's change and its audit land together."""
    return AuditRow(at=now(), action=action, actor=actor or UNATTRIBUTED, outcome=str(outcome), target=target,
                    backup_id=backup_id, detail=detail)
