"""The catalog's tables, and opening a database that holds them.

Every table is created on first use; a column added after a table's first release is
added to an existing catalog by ``ALTER TABLE`` (``_ADDED_COLUMNS``), because
``create_all`` creates missing tables but never alters one.

No ``from __future__ import annotations`` here: with it every ``Mapped[...]`` annotation is a
string that SQLAlchemy evaluates one by one while it maps the classes (~100 columns, several ms
of every command's start-up); without it Python builds them as the classes are defined, and
the mapping is the same.
"""

import os
from datetime import datetime, timezone
from enum import StrEnum
from pathlib import Path

from sqlalchemy import JSON, BigInteger, Boolean, DateTime, Float, ForeignKey, Integer, String, UniqueConstraint, create_engine, event, inspect, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

from backup_tasks.errors import ServiceUnavailable
from backup_tasks.records.catalog.redacted import RedactedJSON, RedactedText
from backup_tasks.records.run_status import QUEUED


class UTCDateTime(TypeDecorator):
    """SQLite forgets time zones; store UTC and hand back aware datetimes everywhere."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(timezone.utc).replace(tzinfo=None)
        return value

    def process_result_value(self, value, dialect):
        return value.replace(tzinfo=timezone.utc) if value is not None else None


class Base(DeclarativeBase):
    pass


class BackupRow(Base):
    __tablename__ = "backups"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    target: Mapped[str] = mapped_column(String(64), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    type: Mapped[str] = mapped_column(String(16), default="full")
    parent_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    host: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), index=True)
    stage: Mapped[str] = mapped_column(String(16), default=QUEUED)
    actor: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    verified_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    size_plain: Mapped[int | None] = mapped_column(Integer, nullable=True)
    size_stored: Mapped[int | None] = mapped_column(Integer, nullable=True)
    sha256_stored: Mapped[str | None] = mapped_column(String(64), nullable=True)
    duration_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    error: Mapped[str | None] = mapped_column(RedactedText, nullable=True)
    manifest: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    locations: Mapped[list["LocationRow"]] = relationship(back_populates="backup", cascade="all, delete-orphan", order_by="LocationRow.id", lazy="selectin")


class LocationRow(Base):
    __tablename__ = "locations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    backup_id: Mapped[str] = mapped_column(ForeignKey("backups.id", ondelete="CASCADE"), index=True)
    tier: Mapped[str] = mapped_column(String(64))
    key: Mapped[str] = mapped_column(String(512))
    size: Mapped[int] = mapped_column(Integer)
    backup: Mapped[BackupRow] = relationship(back_populates="locations")


class VerificationRow(Base):
    __tablename__ = "verifications"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    backup_id: Mapped[str] = mapped_column(String(128), index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    ok: Mapped[bool] = mapped_column(Boolean)
    check: Mapped[str | None] = mapped_column(String(64), nullable=True)
    detail: Mapped[dict | None] = mapped_column(RedactedJSON, nullable=True)
    duration_seconds: Mapped[float] = mapped_column(Float)


class EventRow(Base):
    __tablename__ = "events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    kind: Mapped[str] = mapped_column(String(64), index=True)
    severity: Mapped[str] = mapped_column(String(16))
    target: Mapped[str | None] = mapped_column(String(64), nullable=True)
    host: Mapped[str | None] = mapped_column(String(64), nullable=True)
    backup_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    message: Mapped[str] = mapped_column(RedactedText)
    detail: Mapped[dict | None] = mapped_column(RedactedJSON, nullable=True)


class DrillResult(StrEnum):
    PASSED = "passed"
    FAILED = "failed"


class DrillRow(Base):
    """One restore drill: which backup, the outcome, what was compared, and the RTO evidence."""

    __tablename__ = "drills"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    target: Mapped[str] = mapped_column(String(64), index=True)
    backup_id: Mapped[str | None] = mapped_column(String(128), nullable=True, index=True)
    #: "running" until finished, then a DrillResult
    result: Mapped[str] = mapped_column(String(16), index=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    #: download + decrypt + decompress + restore into the temporary database (RTO evidence)
    restore_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    details: Mapped[dict | None] = mapped_column(RedactedJSON, nullable=True)


class AuditRow(Base):
    """Who did what, when, and how it ended: backups, restores, deletes, cleanups, key operations.

    ``actor`` is ``cli:<user>``, ``app:<name>``, ``api:<token name>`` or ``beat``. ``detail``
    holds ids, paths and counts, never secrets (callers pass redacted values only).
    """

    __tablename__ = "audit"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    action: Mapped[str] = mapped_column(String(64), index=True)
    actor: Mapped[str] = mapped_column(String(128))
    outcome: Mapped[str] = mapped_column(String(32))
    target: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    backup_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    detail: Mapped[dict | None] = mapped_column(RedactedJSON, nullable=True)


class AlertSentRow(Base):
    """When an alert with this dedupe key last went out, and how many identical ones were held back since.

    Kept in the catalog, not in a worker's memory, so every worker and the CLI share one
    rate limit.
    """

    __tablename__ = "alert_sends"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(64))
    target: Mapped[str | None] = mapped_column(String(64), nullable=True)
    last_sent_at: Mapped[datetime] = mapped_column(UTCDateTime)
    #: bumped by every send; a send claims the row only if nobody else bumped it first
    sends: Mapped[int] = mapped_column(Integer, default=1)
    suppressed: Mapped[int] = mapped_column(Integer, default=0)


class AlertConditionRow(Base):
    """A condition the watchdog found and alerted once (RPO breach, low space, missing mount), open until it clears."""

    __tablename__ = "alert_conditions"

    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    kind: Mapped[str] = mapped_column(String(64), index=True)
    target: Mapped[str | None] = mapped_column(String(64), nullable=True)
    tier: Mapped[str | None] = mapped_column(String(64), nullable=True)
    opened_at: Mapped[datetime] = mapped_column(UTCDateTime)
    detail: Mapped[dict | None] = mapped_column(RedactedJSON, nullable=True)
    #: the opening alert reached at least one channel; until then each watchdog run sends it again
    notified: Mapped[bool] = mapped_column(Boolean, default=False)


class LogObjectRow(Base):
    """One archived log file stored for point-in-time recovery (a WAL segment or .history file; binlogs alike).

    Written only after every tier holding it has it whole, so a row is a stored object.
    ``timeline`` and ``seq`` place it in its log's order (for WAL: the timeline and the
    segment number); ``closed_at`` is when the server handed it over, so every commit in
    it happened before then.
    """

    __tablename__ = "log_objects"
    __table_args__ = (UniqueConstraint("target", "family", "name", name="uq_log_object"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    target: Mapped[str] = mapped_column(String(64), index=True)
    #: "wal" (PostgreSQL); other log families share the table
    family: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(128))
    #: segment, history, partial, backup (a PostgreSQL backup history file)
    kind: Mapped[str] = mapped_column(String(16))
    timeline: Mapped[int | None] = mapped_column(Integer, nullable=True)
    seq: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    size_plain: Mapped[int] = mapped_column(BigInteger)
    sha256_plain: Mapped[str] = mapped_column(String(64))
    size_stored: Mapped[int] = mapped_column(BigInteger)
    sha256_stored: Mapped[str] = mapped_column(String(64))
    key: Mapped[str] = mapped_column(String(512))
    tiers: Mapped[list] = mapped_column(JSON)
    compression: Mapped[str] = mapped_column(String(16))
    #: the age recipients' key ids it was encrypted to ([] when stored unencrypted)
    key_ids: Mapped[list] = mapped_column(JSON)
    #: what the family knows of the file (a WAL .history file: its lines), for the window's walk
    detail: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    closed_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    uploaded_at: Mapped[datetime] = mapped_column(UTCDateTime)


class RunHeartbeatRow(Base):
    """Proof of life of a running run, written by the worker process that works on it (records/catalog/heartbeats.py)."""

    __tablename__ = "run_heartbeats"

    run_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    target: Mapped[str] = mapped_column(String(64))
    stage: Mapped[str] = mapped_column(String(16))
    #: a stage is executing (its process beats); false while the run's next message waits in a queue
    working: Mapped[bool] = mapped_column(Boolean)
    #: the worker process: ``<host name>`` and its pid
    worker: Mapped[str] = mapped_column(String(200))
    pid: Mapped[int] = mapped_column(Integer)
    beat_at: Mapped[datetime] = mapped_column(UTCDateTime)


#: columns added to tables after their first release: (table, column, DDL type and default for the rows already there).
#: ``create_all`` creates missing tables but never alters one, so an existing catalog gets these by ALTER TABLE.
_ADDED_COLUMNS = (
    # Conditions opened before this column existed were alerted (or tried) then: not sent again.
    ("alert_conditions", "notified", "BOOLEAN NOT NULL DEFAULT TRUE"),
)


def open_engine(url: str) -> Engine:
    """An engine on ``url``; a SQLite file is created private, in WAL mode, with foreign keys on."""
    if not url.startswith("sqlite"):
        return create_engine(url, pool_pre_ping=True)
    path = url.split("sqlite:///", 1)[-1] if url.startswith("sqlite:///") else ""
    if path and path != ":memory:":
        Path(path).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": 60})

    @event.listens_for(engine, "connect")
    def _wal(dbapi_conn, _record):  # several worker processes share one file on a single host
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA busy_timeout=60000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    # Create the file private: it lists what exists and where, which helps an attacker.
    if path and path != ":memory:" and not os.path.exists(path):
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
    return engine


def create_schema(engine: Engine) -> None:
    """Create the missing tables and columns; ServiceUnavailable if the database cannot be opened."""
    # Several processes (workers, CLI) may open a new catalog at the same moment; the
    # loser of that race sees "already exists" and simply checks again.
    for attempt in range(5):
        try:
            Base.metadata.create_all(engine)
            _add_missing_columns(engine)
            return
        except (OperationalError, ProgrammingError, IntegrityError) as exc:
            if ("already exists" in str(exc.orig) or "duplicate column" in str(exc.orig)) and attempt < 4:
                continue
            raise ServiceUnavailable(
                f"catalog database {engine.url.render_as_string(hide_password=True)} cannot be opened: {exc.orig}",
                "check catalog_url and that the database server is up",
            ) from None


def _add_missing_columns(engine: Engine) -> None:
    """Bring a catalog created by an older release up to date (see ``_ADDED_COLUMNS``)."""
    inspector = inspect(engine)
    for table, column, ddl in _ADDED_COLUMNS:
        if column not in {c["name"] for c in inspector.get_columns(table)}:
            with engine.begin() as conn:
                conn.execute(text(f"ALTER TABLE {table} ADD COLUMN {column} {ddl}"))
