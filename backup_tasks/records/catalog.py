"""The catalog: an index of runs, locations, verifications and events (SQLAlchemy 2.x).

SQLite by default, any SQLAlchemy URL for multi-host set-ups. It is never the source of
truth for what is stored: ``rebuild`` recreates it from storage manifests alone. Nothing
secret is ever written here; manifests hold key ids and credential references only.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from enum import StrEnum
from typing import Any, Iterable

from sqlalchemy import JSON, Boolean, DateTime, Float, ForeignKey, Integer, String, Text, create_engine, delete, event, func, inspect, select, text, update
from sqlalchemy import and_, or_
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, sessionmaker
from sqlalchemy.types import TypeDecorator

from backup_tasks.errors import InputError, ServiceUnavailable


class Status(StrEnum):
    RUNNING = "running"
    UPLOADED = "uploaded"
    VERIFIED = "verified"
    FAILED = "failed"
    DELETED = "deleted"


FINAL = (Status.VERIFIED, Status.FAILED, Status.DELETED)


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
    stage: Mapped[str] = mapped_column(String(16), default="queued")
    actor: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    verified_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    size_plain: Mapped[int | None] = mapped_column(Integer, nullable=True)
    size_stored: Mapped[int | None] = mapped_column(Integer, nullable=True)
    sha256_stored: Mapped[str | None] = mapped_column(String(64), nullable=True)
    duration_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
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
    detail: Mapped[dict | None] = mapped_column(JSON, nullable=True)
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
    message: Mapped[str] = mapped_column(Text)
    detail: Mapped[dict | None] = mapped_column(JSON, nullable=True)


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
    details: Mapped[dict | None] = mapped_column(JSON, nullable=True)


#: the actor of a run started without one: beat passes "beat", applications and the CLI name themselves,
#: so this is a task sent by hand (Flower's async-apply, celery call)
UNATTRIBUTED = "unattributed"


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
    detail: Mapped[dict | None] = mapped_column(JSON, nullable=True)


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
    detail: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    #: the opening alert reached at least one channel; until then each watchdog run sends it again
    notified: Mapped[bool] = mapped_column(Boolean, default=False)


#: columns added to tables after their first release: (table, column, DDL type and default for the rows already there).
#: ``create_all`` creates missing tables but never alters one, so an existing catalog gets these by ALTER TABLE.
_ADDED_COLUMNS = (
    # Conditions opened before this column existed were alerted (or tried) then: not sent again.
    ("alert_conditions", "notified", "BOOLEAN NOT NULL DEFAULT TRUE"),
)


@dataclass(frozen=True)
class AlertClaim:
    """Whether this process may send an alert now; if so, how many identical ones were held back since when.

    ``sends`` is the row's counter as this claim left it, so ``release_alert`` can undo
    exactly this claim and nothing newer.
    """

    send: bool
    suppressed: int = 0
    since: datetime | None = None
    sends: int = 0


@dataclass(frozen=True)
class Location:
    tier: str
    key: str
    size: int


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Catalog:
    """Repository over the catalog database; every method is one short transaction."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = _engine(url)
        self._session = sessionmaker(self.engine, expire_on_commit=False)
        self._create_schema()

    def _create_schema(self) -> None:
        # Several processes (workers, CLI) may open a new catalog at the same moment; the
        # loser of that race sees "already exists" and simply checks again.
        for attempt in range(5):
            try:
                Base.metadata.create_all(self.engine)
                self._add_missing_columns()
                return
            except (OperationalError, ProgrammingError, IntegrityError) as exc:
                if ("already exists" in str(exc.orig) or "duplicate column" in str(exc.orig)) and attempt < 4:
                    continue
                raise ServiceUnavailable(
                    f"catalog database {self.engine.url.render_as_string(hide_password=True)} cannot be opened: {exc.orig}",
                    "check catalog_url and that the database server is up",
                ) from None

    def _add_missing_columns(self) -> None:
        """Bring a catalog created by an older release up to date (see ``_ADDED_COLUMNS``)."""
        inspector = inspect(self.engine)
        for table, column, ddl in _ADDED_COLUMNS:
            if column not in {c["name"] for c in inspector.get_columns(table)}:
                with self.engine.begin() as conn:
                    conn.execute(text(f"ALTER TABLE {table} ADD COLUMN {column} {ddl}"))

    # runs ------------------------------------------------------------------

    def create_run(self, backup_id: str, *, target: str, kind: str, type: str, host: str, actor: str = "") -> datetime:
        """Record a new run and return its creation time; a redelivered start finds its row and leaves it alone."""
        # Millisecond precision: the manifest stores ISO times in ms, and a rebuilt catalog must match.
        now = _utcnow()
        now = now.replace(microsecond=now.microsecond // 1000 * 1000)
        with self._session.begin() as s:
            row = s.get(BackupRow, backup_id)
            if row is None:
                s.add(BackupRow(id=backup_id, target=target, kind=kind, type=type, host=host, status=Status.RUNNING,
                                stage="queued", actor=actor, created_at=now))
                s.add(_audit("backup", actor or UNATTRIBUTED, "started", target=target, backup_id=backup_id, detail={"type": type, "host": host}))
                return now
            return row.created_at

    def set_stage(self, backup_id: str, stage: str) -> None:
        with self._session.begin() as s:
            s.execute(update(BackupRow).where(BackupRow.id == backup_id, BackupRow.status == Status.RUNNING).values(stage=stage))

    def record_upload(self, backup_id: str, manifest: dict[str, Any], locations: Iterable[Location], *, summary: dict[str, Any]) -> None:
        with self._session.begin() as s:
            row = s.get(BackupRow, backup_id)
            if row is None:  # rebuilt catalog or a start that was never recorded
                row = BackupRow(id=backup_id, target=manifest["target"], kind=manifest["kind"], type=manifest["type"],
                                host=manifest["host"], status=Status.RUNNING, created_at=_parse(manifest["created_at"]))
                s.add(row)
            row.status = Status.UPLOADED
            row.stage = "verify"
            row.finished_at = _parse(manifest["finished_at"])
            row.size_plain = manifest["plaintext"]["size"]
            row.size_stored = manifest["stored"]["size"]
            row.sha256_stored = manifest["stored"]["sha256"]
            row.parent_id = manifest.get("parent")
            row.duration_seconds = (row.finished_at - row.created_at).total_seconds()
            row.manifest = summary
            row.error = None
            row.locations = [LocationRow(tier=l.tier, key=l.key, size=l.size) for l in locations]

    def record_partial_upload(self, backup_id: str, manifest: dict[str, Any], locations: Iterable[Location], *,
                              summary: dict[str, Any]) -> None:
        """Record the copies that were stored while another tier failed; the run stays ``running``.

        The upload stage is then retried or the run fails (fail_run), and either way the
        catalog knows where the committed copies are, so verify, restore and retention see them.
        """
        with self._session.begin() as s:
            row = s.get(BackupRow, backup_id)
            if row is None or row.status != Status.RUNNING:
                return
            row.size_plain = manifest["plaintext"]["size"]
            row.size_stored = manifest["stored"]["size"]
            row.sha256_stored = manifest["stored"]["sha256"]
            row.parent_id = manifest.get("parent")
            row.manifest = summary
            row.locations = [LocationRow(tier=l.tier, key=l.key, size=l.size) for l in locations]

    def record_verification(self, backup_id: str, *, ok: bool, check: str | None, detail: dict, duration: float, at: datetime | None = None) -> None:
        at = at or _utcnow()
        with self._session.begin() as s:
            s.add(VerificationRow(backup_id=backup_id, at=at, ok=ok, check=check, detail=detail, duration_seconds=duration))
            row = s.get(BackupRow, backup_id)
            if row is None or row.status == Status.DELETED:
                return
            if row.status == Status.UPLOADED:  # the run's own verify: the chain ends here
                row.duration_seconds = (at - row.created_at).total_seconds()
                s.add(_audit("backup", row.actor or UNATTRIBUTED, Status.VERIFIED if ok else Status.FAILED, target=row.target,
                             backup_id=backup_id, detail=None if ok else {"check": check}))
            if ok:
                row.status, row.verified_at, row.stage, row.error = Status.VERIFIED, at, "done", None
            else:
                row.status, row.stage = Status.FAILED, "done"
                row.error = f"verification failed ({check}): {detail.get('message', '')}"

    def fail_run(self, backup_id: str, reason: str) -> str:
        """Mark a running run failed. Returns what happened: 'failed', 'uploaded' (kept, reason noted) or 'unchanged'."""
        with self._session.begin() as s:
            row = s.get(BackupRow, backup_id)
            if row is None:
                return "unchanged"
            if row.status == Status.RUNNING:
                row.status, row.error, row.finished_at, row.stage = Status.FAILED, reason, _utcnow(), "done"
                row.duration_seconds = (row.finished_at - row.created_at).total_seconds()
                s.add(_audit("backup", row.actor or UNATTRIBUTED, Status.FAILED, target=row.target, backup_id=backup_id,
                             detail={"reason": reason}))
                return "failed"
            if row.status == Status.UPLOADED and row.error != reason:
                # Stored and signed but not verified: keep it as uploaded, note why verify did not finish.
                row.error = reason
                return "uploaded"
            return "unchanged"

    def mark_deleted(self, backup_id: str) -> None:
        with self._session.begin() as s:
            s.execute(update(BackupRow).where(BackupRow.id == backup_id).values(status=Status.DELETED))

    def drop_locations(self, backup_id: str, tiers: Iterable[str]) -> str | None:
        """Forget the copies on ``tiers`` (retention removed them); with none left the entry becomes ``deleted``.

        Returns the entry's status afterwards (None if there is no such entry). Idempotent.
        """
        tiers = set(tiers)
        with self._session.begin() as s:
            row = s.get(BackupRow, backup_id)
            if row is None:
                return None
            row.locations = [l for l in row.locations if l.tier not in tiers]
            if not row.locations:
                row.status, row.stage = Status.DELETED, "done"
            return row.status

    # queries ---------------------------------------------------------------

    def get(self, backup_id: str) -> BackupRow:
        with self._session() as s:
            row = s.get(BackupRow, backup_id)
            if row is None:
                raise InputError(f"no backup with id '{backup_id}' in the catalog", "list backups with: backupctl list")
            return row

    def find(self, backup_id: str) -> BackupRow | None:
        with self._session() as s:
            return s.get(BackupRow, backup_id)

    def list(self, *, target: str | None = None, status: str | None = None, limit: int | None = None,
             kind: str | None = None, before: tuple[datetime, str] | None = None) -> list[BackupRow]:
        """Newest first; ``before`` (created_at, id) continues a page after its last entry (keyset paging)."""
        q = select(BackupRow).order_by(BackupRow.created_at.desc(), BackupRow.id.desc())
        if target:
            q = q.where(BackupRow.target == target)
        if status:
            q = q.where(BackupRow.status == status)
        if kind:
            q = q.where(BackupRow.kind == kind)
        if before:
            at, last_id = before
            q = q.where(or_(BackupRow.created_at < at, and_(BackupRow.created_at == at, BackupRow.id < last_id)))
        if limit:
            q = q.limit(limit)
        with self._session() as s:
            return list(s.scalars(q))

    def verifications(self, backup_id: str) -> list[VerificationRow]:
        with self._session() as s:
            return list(s.scalars(select(VerificationRow).where(VerificationRow.backup_id == backup_id).order_by(VerificationRow.id)))

    # events ----------------------------------------------------------------

    def add_event(self, *, kind: str, severity: str, message: str, target: str | None = None, host: str | None = None,
                  backup_id: str | None = None, detail: dict | None = None) -> None:
        with self._session.begin() as s:
            s.add(EventRow(at=_utcnow(), kind=kind, severity=severity, target=target, host=host, backup_id=backup_id,
                           message=message, detail=detail))

    def events(self, *, kind: str | None = None, backup_id: str | None = None) -> list[EventRow]:
        q = select(EventRow).order_by(EventRow.id)
        if kind:
            q = q.where(EventRow.kind == kind)
        if backup_id:
            q = q.where(EventRow.backup_id == backup_id)
        with self._session() as s:
            return list(s.scalars(q))

    # audit -----------------------------------------------------------------

    def add_audit(self, action: str, *, actor: str, outcome: str, target: str | None = None, backup_id: str | None = None,
                  detail: dict | None = None) -> None:
        with self._session.begin() as s:
            s.add(_audit(action, actor, outcome, target=target, backup_id=backup_id, detail=detail))

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

    # drills ----------------------------------------------------------------

    def start_drill(self, target: str, backup_id: str | None, *, details: dict | None = None) -> int:
        with self._session.begin() as s:
            row = DrillRow(target=target, backup_id=backup_id, result="running", started_at=_utcnow(), details=details)
            s.add(row)
            s.flush()
            return row.id

    def finish_drill(self, drill_id: int, *, result: str, details: dict, restore_seconds: float | None) -> None:
        with self._session.begin() as s:
            row = s.get(DrillRow, drill_id)
            row.result = DrillResult(result)
            row.finished_at = _utcnow()
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

    # rebuild ---------------------------------------------------------------

    def restore_passed_drills(self, markers: list[dict]) -> int:
        """Add the passed drills that signed drilled.json markers prove and this catalog lacks (rebuild)."""
        added = 0
        with self._session.begin() as s:
            for m in markers:
                at = _parse(m["drilled_at"])
                known = s.scalar(select(DrillRow.id).where(DrillRow.backup_id == m["backup_id"], DrillRow.result == DrillResult.PASSED))
                if known is not None:
                    continue
                s.add(DrillRow(target=m["target"], backup_id=m["backup_id"], result=DrillResult.PASSED, started_at=at, finished_at=at,
                               restore_seconds=m.get("restore_seconds"),
                               details={"rebuilt_from": "drilled.json", "server": m.get("server"), "tables": m.get("tables")}))
                added += 1
        return added

    def replace_backups(self, rows: list[tuple[dict, list[Location], dict | None]]) -> int:
        """Swap the backup index for one rebuilt from manifests; events and history stay."""
        with self._session.begin() as s:
            s.execute(delete(LocationRow))
            s.execute(delete(BackupRow))
            for manifest, locations, verified in rows:
                created = _parse(manifest["created_at"])
                finished = _parse(manifest["finished_at"])
                s.add(BackupRow(
                    id=manifest["backup_id"], target=manifest["target"], kind=manifest["kind"], type=manifest["type"],
                    parent_id=manifest.get("parent"), host=manifest["host"],
                    status=Status.VERIFIED if verified else Status.UPLOADED, stage="done" if verified else "verify",
                    created_at=created, finished_at=finished, verified_at=_parse(verified["verified_at"]) if verified else None,
                    size_plain=manifest["plaintext"]["size"], size_stored=manifest["stored"]["size"],
                    sha256_stored=manifest["stored"]["sha256"], duration_seconds=(finished - created).total_seconds(),
                    manifest=_summary(manifest),
                    locations=[LocationRow(tier=l.tier, key=l.key, size=l.size) for l in locations],
                ))
        return len(rows)

    # monitoring: alerts, watchdog, metrics and the report --------------------

    def claim_alert(self, key: str, *, kind: str, target: str | None, now: datetime, window_seconds: float) -> AlertClaim:
        """Rate limit shared by all processes: send if no identical alert went out within the window.

        A compare-and-set on ``sends`` makes exactly one of several racing processes win;
        the others count themselves as suppressed.
        """
        try:
            with self._session.begin() as s:
                row = s.get(AlertSentRow, key)
                if row is None:
                    s.add(AlertSentRow(key=key, kind=kind, target=target, last_sent_at=now, sends=1, suppressed=0))
                    return AlertClaim(True, sends=1)
                if (now - row.last_sent_at).total_seconds() < window_seconds:
                    s.execute(update(AlertSentRow).where(AlertSentRow.key == key)
                              .values(suppressed=AlertSentRow.suppressed + 1))
                    return AlertClaim(False)
                held, since, seen = row.suppressed, row.last_sent_at, row.sends
                won = s.execute(update(AlertSentRow).where(AlertSentRow.key == key, AlertSentRow.sends == seen)
                                .values(sends=seen + 1, last_sent_at=now, suppressed=0)).rowcount == 1
                return AlertClaim(won, held if won else 0, since if won else None, seen + 1 if won else 0)
        except IntegrityError:  # another process inserted the same key first: it sends
            return AlertClaim(False)

    def release_alert(self, key: str, claim: AlertClaim) -> bool:
        """Give back a claim whose alert reached no channel, so the next identical alert is sent.

        The row goes back to what it was before the claim (the previous send time, the count
        held back, plus those held back meanwhile); a row the claim created is removed.
        Nothing changes if another claim came after this one. True if released.
        """
        if not claim.send:
            return False
        with self._session.begin() as s:
            if claim.since is None:  # the claim inserted the row
                q = delete(AlertSentRow).where(AlertSentRow.key == key, AlertSentRow.sends == claim.sends)
            else:
                q = (update(AlertSentRow).where(AlertSentRow.key == key, AlertSentRow.sends == claim.sends)
                     .values(last_sent_at=claim.since, suppressed=AlertSentRow.suppressed + claim.suppressed))
            return s.execute(q).rowcount == 1

    def open_condition(self, key: str, *, kind: str, target: str | None = None, tier: str | None = None,
                       detail: dict | None = None, now: datetime | None = None) -> bool:
        """Open a watchdog condition; True only for the one caller that opened it (then it alerts)."""
        try:
            with self._session.begin() as s:
                if s.get(AlertConditionRow, key) is not None:
                    return False
                s.add(AlertConditionRow(key=key, kind=kind, target=target, tier=tier, opened_at=now or _utcnow(), detail=detail))
            return True
        except IntegrityError:
            return False

    def mark_notified(self, key: str) -> None:
        """The opening alert of this condition reached a channel: the watchdog stops sending it."""
        with self._session.begin() as s:
            s.execute(update(AlertConditionRow).where(AlertConditionRow.key == key).values(notified=True))

    def close_condition(self, key: str) -> AlertConditionRow | None:
        """Close an open condition; returns it to the one caller that closed it (then it sends 'resolved')."""
        with self._session.begin() as s:
            row = s.get(AlertConditionRow, key)
            if row is None:
                return None
            if s.execute(delete(AlertConditionRow).where(AlertConditionRow.key == key)).rowcount != 1:
                return None
            return row

    def open_conditions(self, kind: str | None = None) -> list[AlertConditionRow]:
        q = select(AlertConditionRow).order_by(AlertConditionRow.opened_at)
        if kind:
            q = q.where(AlertConditionRow.kind == kind)
        with self._session() as s:
            return list(s.scalars(q))

    def newest(self, target: str, statuses: Iterable[str] | None = None, *, verified: bool = False) -> BackupRow | None:
        """The target's newest run (by creation time) in ``statuses``; ``verified``: that was ever verified."""
        q = select(BackupRow).where(BackupRow.target == target).order_by(BackupRow.created_at.desc(), BackupRow.id.desc()).limit(1)
        if statuses is not None:
            q = q.where(BackupRow.status.in_(list(statuses)))
        if verified:
            q = q.where(BackupRow.verified_at.is_not(None))
        with self._session() as s:
            return s.scalars(q).first()

    def status_counts(self) -> dict[tuple[str, str], int]:
        """{(target, status): number of runs} over the whole catalog."""
        q = select(BackupRow.target, BackupRow.status, func.count()).group_by(BackupRow.target, BackupRow.status)
        with self._session() as s:
            return {(t, st): n for t, st, n in s.execute(q)}

    def storage_by_tier(self) -> dict[tuple[str, str], int]:
        """{(target, tier): bytes stored} for backups that still have copies."""
        q = (select(BackupRow.target, LocationRow.tier, func.sum(LocationRow.size))
             .join(LocationRow, LocationRow.backup_id == BackupRow.id)
             .where(BackupRow.status != Status.DELETED).group_by(BackupRow.target, LocationRow.tier))
        with self._session() as s:
            return {(t, tier): int(n or 0) for t, tier, n in s.execute(q)}

    def runs_since(self, since: datetime, target: str | None = None) -> list[BackupRow]:
        """Runs created at or after ``since``, oldest first (report plots and success rates)."""
        q = select(BackupRow).where(BackupRow.created_at >= since).order_by(BackupRow.created_at, BackupRow.id)
        if target:
            q = q.where(BackupRow.target == target)
        with self._session() as s:
            return list(s.scalars(q))

    def recent_sizes(self, target: str, *, before: datetime, limit: int, exclude: str | None = None) -> list[int]:
        """Stored sizes of the target's latest ``limit`` good runs created before ``before`` (the usual size).

        Good: stored and not failed (uploaded, verified), or deleted after it had been verified.
        A failed run that left copies ends ``deleted`` too once retention removes them; its
        partial size must not move the median.
        """
        good = or_(BackupRow.status.in_([Status.UPLOADED, Status.VERIFIED]),
                   and_(BackupRow.status == Status.DELETED, BackupRow.verified_at.is_not(None)))
        q = (select(BackupRow.size_stored).where(BackupRow.target == target, BackupRow.created_at <= before,
                                                  BackupRow.size_stored.is_not(None), good)
             .order_by(BackupRow.created_at.desc(), BackupRow.id.desc()).limit(limit))
        if exclude:
            q = q.where(BackupRow.id != exclude)
        with self._session() as s:
            return [int(n) for n in s.scalars(q)]

def _audit(action: str, actor: str, outcome: str, *, target: str | None, backup_id: str | None, detail: dict | None) -> AuditRow:
    return AuditRow(at=_utcnow(), action=action, actor=actor or UNATTRIBUTED, outcome=str(outcome), target=target,
                    backup_id=backup_id, detail=detail)


def _summary(manifest: dict) -> dict:
    from backup_tasks.records.manifest import summary

    return summary(manifest)


def _parse(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        from pathlib import Path

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

        if path and path != ":memory:":
            # Create the file private: it lists what exists and where, which helps an attacker.
            import os

            if not os.path.exists(path):
                os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        return engine
    return create_engine(url, pool_pre_ping=True)


def dumps_row(row: BackupRow) -> dict[str, Any]:
    """The §5 JSON shape of a catalog entry."""
    from backup_tasks.records.manifest import iso

    return {
        "id": row.id,
        "target": row.target,
        "kind": row.kind,
        "type": row.type,
        "status": row.status,
        "created_at": iso(row.created_at),
        "finished_at": iso(row.finished_at),
        "size_plain": row.size_plain,
        "size_stored": row.size_stored,
        "locations": [{"tier": l.tier, "key": l.key, "size": l.size} for l in row.locations],
        "verified_at": iso(row.verified_at),
        "host": row.host,
        "duration_seconds": row.duration_seconds,
        "error": row.error,
    }


__all__ = ["Catalog", "Status", "Location", "BackupRow", "DrillResult", "DrillRow", "dumps_row", "AlertClaim",
           "AlertConditionRow"]
