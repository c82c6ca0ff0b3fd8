"""Shipped binary logs: one row per closed MySQL/MariaDB binlog file stored for a target.

A row is written only after the file's object and its signed record are on every tier,
so a row means "restorable from here". ``(target, name)`` is unique: the same name
arriving again with other content (a server whose log numbering was reset) is a
conflict the shipper reports, never a silent overwrite.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Integer, String, UniqueConstraint, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, mapped_column, sessionmaker

from backup_tasks.records.catalog.logs import LogKeyUse
from backup_tasks.records.catalog.schema import Base, UTCDateTime

#: the log family binlogs are counted under, beside the ``log_objects`` table's families (PostgreSQL's "wal")
FAMILY = "binlog"


class BinlogRow(Base):
    __tablename__ = "binlogs"
    __table_args__ = (UniqueConstraint("target", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    target: Mapped[str] = mapped_column(String(64), index=True)
    #: the server's file name, e.g. mysql-bin.000042, and its number (the part after the last dot)
    name: Mapped[str] = mapped_column(String(255))
    seq: Mapped[int] = mapped_column(Integer)
    server_id: Mapped[int] = mapped_column(Integer)
    size: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    first_event_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_event_at: Mapped[datetime] = mapped_column(UTCDateTime)
    shipped_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    key: Mapped[str] = mapped_column(String(512))
    size_stored: Mapped[int] = mapped_column(Integer)
    sha256_stored: Mapped[str] = mapped_column(String(64))
    #: tiers holding the object, and how it was compressed and encrypted (key ids only)
    detail: Mapped[dict] = mapped_column(JSON)


class Binlogs:
    """The catalog's binlogs table."""

    _session: sessionmaker

    def binlogs(self, target: str) -> list[BinlogRow]:
        """Every shipped binlog of ``target``, oldest (lowest number) first."""
        with self._session() as s:
            return list(s.scalars(select(BinlogRow).where(BinlogRow.target == target).order_by(BinlogRow.seq, BinlogRow.id)))

    def binlog_key_uses(self) -> list[LogKeyUse]:
        """Shipped binlogs counted by key ids and tiers (both kept in ``detail``), for ``keys status``.

        The rows are streamed, so memory stays flat however many logs are kept.
        """
        counts: dict[tuple, list] = {}
        with self._session() as s:
            for detail, shipped_at in s.execute(select(BinlogRow.detail, BinlogRow.shipped_at)
                                                .execution_options(yield_per=1000)):
                detail = detail or {}
                group = (tuple((detail.get("encryption") or {}).get("recipients") or []), tuple(detail.get("tiers") or []))
                seen = counts.setdefault(group, [0, shipped_at])
                seen[0] += 1
                seen[1] = min(seen[1], shipped_at)
        return [LogKeyUse(FAMILY, ids, tiers, n, first) for (ids, tiers), (n, first) in counts.items()]

    def binlog(self, target: str, name: str) -> BinlogRow | None:
        with self._session() as s:
            return s.scalars(select(BinlogRow).where(BinlogRow.target == target, BinlogRow.name == name)).first()

    def delete_binlog(self, target: str, name: str) -> None:
        """Forget a shipped binlog (retention removed its objects first)."""
        with self._session.begin() as s:
            row = s.scalars(select(BinlogRow).where(BinlogRow.target == target, BinlogRow.name == name)).first()
            if row is not None:
                s.delete(row)

    def record_binlog(self, **fields) -> BinlogRow:
        """Add a shipped binlog; a row already there for the same (target, name) is returned unchanged."""
        try:
            with self._session.begin() as s:
                row = BinlogRow(**fields)
                s.add(row)
            return row
        except IntegrityError:
            existing = self.binlog(fields["target"], fields["name"])
            if existing is None:
                raise
            return existing
