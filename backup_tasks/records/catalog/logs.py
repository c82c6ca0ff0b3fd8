"""Archived log files stored for point-in-time recovery: record, look up, list, forget."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import String, cast, delete, func, select
from sqlalchemy.orm import sessionmaker

from backup_tasks.records.catalog.schema import LogObjectRow


@dataclass(frozen=True)
class LogKeyUse:
    """How many stored log files of one family are encrypted to ``key_ids`` and held by ``tiers``."""

    family: str
    key_ids: tuple[str, ...]
    tiers: tuple[str, ...]
    count: int
    first_at: datetime | None


class Logs:
    """The catalog's ``log_objects`` table."""

    _session: sessionmaker

    def record_log(self, *, target: str, family: str, name: str, kind: str, timeline: int | None, seq: int | None,
                   size_plain: int, sha256_plain: str, size_stored: int, sha256_stored: str, key: str, tiers: list[str],
                   compression: str, key_ids: list[str], closed_at: datetime, uploaded_at: datetime,
                   detail: dict | None = None) -> LogObjectRow:
        """Record one stored log file; recording it again (a shipping run redone after a crash) replaces the row."""
        with self._session.begin() as s:
            row = s.scalars(select(LogObjectRow).where(LogObjectRow.target == target, LogObjectRow.family == family,
                                                       LogObjectRow.name == name)).first()
            if row is None:
                row = LogObjectRow(target=target, family=family, name=name)
                s.add(row)
            row.kind, row.timeline, row.seq = kind, timeline, seq
            row.size_plain, row.sha256_plain, row.size_stored, row.sha256_stored = size_plain, sha256_plain, size_stored, sha256_stored
            row.key, row.tiers, row.compression, row.key_ids = key, list(tiers), compression, list(key_ids)
            row.closed_at, row.uploaded_at, row.detail = closed_at, uploaded_at, detail
        return row

    def find_log(self, target: str, family: str, name: str) -> LogObjectRow | None:
        with self._session() as s:
            return s.scalars(select(LogObjectRow).where(LogObjectRow.target == target, LogObjectRow.family == family,
                                                        LogObjectRow.name == name)).first()

    def logs(self, target: str, family: str) -> list[LogObjectRow]:
        """Every stored log file of a target's family, in name order (for WAL: timeline, then position)."""
        with self._session() as s:
            return list(s.scalars(select(LogObjectRow).where(LogObjectRow.target == target, LogObjectRow.family == family)
                                  .order_by(LogObjectRow.name)))

    def segments_after(self, target: str, family: str, timeline: int, seq: int, limit: int) -> list[LogObjectRow]:
        """The next stored segments of one timeline after position ``seq``, in order (a restore's read-ahead)."""
        with self._session() as s:
            return list(s.scalars(select(LogObjectRow).where(
                LogObjectRow.target == target, LogObjectRow.family == family, LogObjectRow.kind == "segment",
                LogObjectRow.timeline == timeline, LogObjectRow.seq > seq).order_by(LogObjectRow.seq).limit(limit)))

    def newest_log_at(self, target: str, family: str) -> datetime | None:
        """When the newest stored log file of the target was closed (None: nothing stored yet)."""
        with self._session() as s:
            return s.scalar(select(func.max(LogObjectRow.closed_at)).where(LogObjectRow.target == target,
                                                                           LogObjectRow.family == family))

    def log_key_uses(self) -> list[LogKeyUse]:
        """Stored log files counted by family, key ids and tiers: what ``keys status`` needs, without a row per file.

        Grouped in the database (a PITR target stores a file a minute or more, so the table
        is the catalog's largest); the JSON columns are grouped by their text, which both
        SQLite and PostgreSQL can compare.
        """
        ids, tiers = cast(LogObjectRow.key_ids, String), cast(LogObjectRow.tiers, String)
        with self._session() as s:
            rows = s.execute(select(LogObjectRow.family, ids, tiers, func.count(), func.min(LogObjectRow.uploaded_at))
                             .group_by(LogObjectRow.family, ids, tiers)).all()
        return [LogKeyUse(family, tuple(json.loads(k or "[]")), tuple(json.loads(t or "[]")), n, first)
                for family, k, t, n, first in rows]

    def forget_log(self, target: str, family: str, name: str) -> None:
        with self._session.begin() as s:
            s.execute(delete(LogObjectRow).where(LogObjectRow.target == target, LogObjectRow.family == family,
                                                 LogObjectRow.name == name))
