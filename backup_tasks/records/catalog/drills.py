"""Restore drills: started, finished, and the newest backup a drill proved restorable."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from backup_tasks.records.catalog.schema import BackupRow, DrillResult, DrillRow
from backup_tasks.records.run_status import Status
from backup_tasks.timefmt import now, parse


class Drills:
    """The catalog's drills table."""

    _session: sessionmaker

    def start_drill(self, target: str, backup_id: str | None, *, details: dict | None = None) -> int:
        with self._session.begin() as s:
            row = DrillRow(target=target, backup_id=backup_id, result="running", started_at=now(), details=details)
            s.add(row)
            s.flush()
            return row.id

    def finish_drill(self, drill_id: int, *, result: str, details: dict, restore_seconds: float | None) -> None:
        with self._session.begin() as s:
            row = s.get(DrillRow, drill_id)
            row.result = DrillResult(result)
            row.finished_at = now()
            row.details = details
            row.restore_seconds = restore_seconds

    def drills(self, target: str | None = None) -> list[DrillRow]:
        """Drills, newest first."""
        q = select(DrillRow).order_by(DrillRow.started_at.desc(), DrillRow.id.desc())
        if target:
            q = q.where(DrillRow.target == target)
        with self._session() as s:
            return list(s.scalars(q))

    def latest_drill_passed(self, target: str) -> str | None:
        """The id of the newest backup of ``target`` that a drill proved restorable, or None.

        Newest by the backup's creation time, not by when the drill ran: retention must
        keep this one (the last proven restore is never removed), whatever order drills happened in.
        """
        q = (select(DrillRow.backup_id).join(BackupRow, BackupRow.id == DrillRow.backup_id)
             .where(DrillRow.target == target, DrillRow.result == DrillResult.PASSED, BackupRow.status != Status.DELETED)
             .order_by(BackupRow.created_at.desc(), BackupRow.id.desc()).limit(1))
        with self._session() as s:
            return s.scalars(q).first()

    def restore_passed_drills(self, markers: list[dict]) -> int:
        """Add the passed drills that signed drilled.json markers prove and this catalog lacks (rebuild)."""
        added = 0
        with self._session.begin() as s:
            for m in markers:
                at = parse(m["drilled_at"])
                known = s.scalar(select(DrillRow.id).where(DrillRow.backup_id == m["backup_id"], DrillRow.result == DrillResult.PASSED))
                if known is not None:
                    continue
                s.add(DrillRow(target=m["target"], backup_id=m["backup_id"], result=DrillResult.PASSED, started_at=at, finished_at=at,
                               restore_seconds=m.get("restore_seconds"),
                               details={"rebuilt_from": "drilled.json", "server": m.get("server"), "tables": m.get("tables")}))
                added += 1
        return added
