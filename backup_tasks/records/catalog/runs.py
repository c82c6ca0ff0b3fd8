"""Backup runs: their rows, where their copies are, and how their verifications went.

The catalog does not know the chain's stages: the callers say which stage a run is at
(``set_stage``) and which one a committed upload hands it to (``next_stage``). It knows
only a run's first and last stage, ``queued`` and ``done``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Iterable

from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.orm import sessionmaker

from backup_tasks.errors import InputError
from backup_tasks.records.catalog.history import audit_row
from backup_tasks.records.catalog.schema import BackupRow, LocationRow, VerificationRow
from backup_tasks.records.run_status import DONE, QUEUED, UNATTRIBUTED, Status
from backup_tasks.records.manifest import summary as summarize
from backup_tasks.timefmt import iso, now, parse


@dataclass(frozen=True)
class Location:
    tier: str
    key: str
    size: int


class Runs:
    """The catalog's backups, locations and verifications tables."""

    _session: sessionmaker

    # a run's life -----------------------------------------------------------

    def create_run(self, backup_id: str, *, target: str, kind: str, type: str, host: str, actor: str = "") -> datetime:
        """Record a new run and return its creation time; a redelivered start finds its row and leaves it alone."""
        # Millisecond precision: the manifest stores ISO times in ms, and a rebuilt catalog must match.
        created = now()
        created = created.replace(microsecond=created.microsecond // 1000 * 1000)
        with self._session.begin() as s:
            row = s.get(BackupRow, backup_id)
            if row is None:
                s.add(BackupRow(id=backup_id, target=target, kind=kind, type=type, host=host, status=Status.RUNNING,
                                stage=QUEUED, actor=actor, created_at=created))
                s.add(audit_row("backup", actor or UNATTRIBUTED, "started", target=target, backup_id=backup_id, detail={"type": type, "host": host}))
                return created
            return row.created_at

    def set_stage(self, backup_id: str, stage: str) -> None:
        with self._session.begin() as s:
            s.execute(update(BackupRow).where(BackupRow.id == backup_id, BackupRow.status == Status.RUNNING).values(stage=stage))

    def record_upload(self, backup_id: str, manifest: dict[str, Any], locations: Iterable[Location], *, summary: dict[str, Any],
                      next_stage: str) -> None:
        """The run's manifest is committed on ``locations``: it is ``uploaded``, waiting for ``next_stage``."""
        with self._session.begin() as s:
            row = s.get(BackupRow, backup_id)
            if row is None:  # rebuilt catalog or a start that was never recorded
                row = _new_row(backup_id, manifest)
                s.add(row)
            _uploaded(row, manifest, locations, summary, next_stage)

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
            _stored(row, manifest, locations, summary)

    def record_revision(self, backup_id: str, manifest: dict[str, Any], locations: Iterable[Location], *,
                        summary: dict[str, Any]) -> None:
        """A stored backup's manifest was replaced by a new revision (re-encrypted): new object, same backup, same status."""
        with self._session.begin() as s:
            row = s.get(BackupRow, backup_id)
            if row is not None:
                _stored(row, manifest, locations, summary)

    def record_verification(self, backup_id: str, *, ok: bool, check: str | None, detail: dict, duration: float, at: datetime | None = None) -> None:
        at = at or now()
        with self._session.begin() as s:
            s.add(VerificationRow(backup_id=backup_id, at=at, ok=ok, check=check, detail=detail, duration_seconds=duration))
            row = s.get(BackupRow, backup_id)
            if row is None or row.status == Status.DELETED:
                return
            if row.status == Status.UPLOADED:  # the run's own verify: the chain ends here
                row.duration_seconds = (at - row.created_at).total_seconds()
                s.add(audit_row("backup", row.actor or UNATTRIBUTED, Status.VERIFIED if ok else Status.FAILED, target=row.target,
                                backup_id=backup_id, detail=None if ok else {"check": check}))
            if ok:
                row.status, row.verified_at, row.stage, row.error = Status.VERIFIED, at, DONE, None
            else:
                row.status, row.stage = Status.FAILED, DONE
                row.error = f"verification failed ({check}): {detail.get('message', '')}"

    def fail_run(self, backup_id: str, reason: str) -> str:
        """Mark a running run failed. Returns what happened: 'failed', 'uploaded' (kept, reason noted) or 'unchanged'."""
        with self._session.begin() as s:
            row = s.get(BackupRow, backup_id)
            if row is None:
                return "unchanged"
            if row.status == Status.RUNNING:
                row.status, row.error, row.finished_at, row.stage = Status.FAILED, reason, now(), DONE
                row.duration_seconds = (row.finished_at - row.created_at).total_seconds()
                s.add(audit_row("backup", row.actor or UNATTRIBUTED, Status.FAILED, target=row.target, backup_id=backup_id,
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
                row.status, row.stage = Status.DELETED, DONE
            return row.status

    def replace_backups(self, rows: list[tuple[dict, list[Location], dict | None]], *, next_stage: str) -> int:
        """Swap the backup index for one rebuilt from manifests; events and history stay.

        Each row is (manifest, locations, verified.json marker or None); a backup without
        a marker is ``uploaded``, waiting for ``next_stage``.
        """
        with self._session.begin() as s:
            s.execute(delete(LocationRow))
            s.execute(delete(BackupRow))
            for manifest, locations, verified in rows:
                row = _new_row(manifest["backup_id"], manifest)
                _uploaded(row, manifest, locations, summarize(manifest), next_stage)
                if verified:
                    row.status, row.stage, row.verified_at = Status.VERIFIED, DONE, parse(verified["verified_at"])
                s.add(row)
        return len(rows)

    # queries -----------------------------------------------------------------

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

    def newest(self, target: str, statuses: Iterable[str] | None = None, *, verified: bool = False) -> BackupRow | None:
        """The target's newest run (by creation time) in ``statuses``; ``verified``: that was ever verified."""
        q = select(BackupRow).where(BackupRow.target == target).order_by(BackupRow.created_at.desc(), BackupRow.id.desc()).limit(1)
        if statuses is not None:
            q = q.where(BackupRow.status.in_(list(statuses)))
        if verified:
            q = q.where(BackupRow.verified_at.is_not(None))
        with self._session() as s:
            return s.scalars(q).first()

    # monitoring: metrics, the watchdog and the report ---------------------------

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


# the manifest -> row mapping, in one place: what an upload, a partial upload and a rebuild record

def _new_row(backup_id: str, manifest: dict[str, Any]) -> BackupRow:
    """A row for a run the catalog never recorded, as its manifest describes it."""
    return BackupRow(id=backup_id, target=manifest["target"], kind=manifest["kind"], type=manifest["type"],
                     host=manifest["host"], status=Status.RUNNING, stage=QUEUED, created_at=parse(manifest["created_at"]))


def _stored(row: BackupRow, manifest: dict[str, Any], locations: Iterable[Location], summary: dict[str, Any]) -> None:
    """What was stored, and where."""
    row.size_plain = manifest["plaintext"]["size"]
    row.size_stored = manifest["stored"]["size"]
    row.sha256_stored = manifest["stored"]["sha256"]
    row.parent_id = manifest.get("parent")
    row.type = manifest.get("type", row.type)  # an incremental with no usable parent ran as a full
    row.manifest = summary
    row.locations = [LocationRow(tier=l.tier, key=l.key, size=l.size) for l in locations]


def _uploaded(row: BackupRow, manifest: dict[str, Any], locations: Iterable[Location], summary: dict[str, Any],
              next_stage: str) -> None:
    """The run's manifest is committed: stored, timed, and waiting for ``next_stage``."""
    _stored(row, manifest, locations, summary)
    row.status, row.stage, row.error = Status.UPLOADED, next_stage, None
    row.finished_at = parse(manifest["finished_at"])
    row.duration_seconds = (row.finished_at - row.created_at).total_seconds()


def dumps_row(row: BackupRow) -> dict[str, Any]:
    """The JSON shape of a catalog entry, as the CLI's ``--json`` and the HTTP API show it."""
    return {
        "id": row.id,
        "target": row.target,
        "kind": row.kind,
        "type": row.type,
        "parent": row.parent_id,
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
        # the encryption key ids the stored object needs (``keys status`` counts them; ``reencrypt`` moves them)
        "key_ids": list(((row.manifest or {}).get("encryption") or {}).get("recipients") or []),
    }
