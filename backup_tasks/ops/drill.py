"""Restore drills: prove, every week, that the latest verified backup of a database restores.

A drill takes the target's newest *verified* backup, restores it into a new database
with a unique name on the target's drill server (``drill = {server, password, checks}``),
and then compares, exactly:

- the set of tables and every table's row count with the signed manifest (the counts
  were taken in the dump's own snapshot, so ``=`` is the right comparison);
- each health-check query's first column, which must be true.

It records the drill in the catalog (result, details, and the measured restore time
as RTO evidence), emits a ``drill.failed`` event when anything failed, and always drops
the temporary database: after a pass, a failure, a timeout or a bug alike. A worker
killed outright cannot clean up, so every drill first sweeps this target's leftover
drill databases that are older than the drill timeout.

The restore uses the same source primitives as ``backupctl restore --to-database``,
and the same read-back path as verify: stored sha256, decryption, decompression and
plaintext sha256 are all checked, so a tampered artifact fails the drill.

A physical PostgreSQL target is drilled the way it is restored, by the subclass in
ops/postgres_pitr/physical_drill.py; a binlog target to a moment, by the one in ops/mysql_pitr/drill.py.
"""

from __future__ import annotations

import logging
import re
import secrets
import shutil
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded

from backup_tasks import timefmt
from backup_tasks.records import audit, events, manifest, markers
from backup_tasks.config import Target
from backup_tasks.sources.db import dsn
from backup_tasks.ops import readback
from backup_tasks.records.catalog import DrillResult, Status
from backup_tasks.errors import BackupError, DeadlineExceeded, DrillFailed
from backup_tasks.ops.runtime import Runtime
from backup_tasks.sources.base import Source, source_for
from backup_tasks.config.drill import drill_spec

log = logging.getLogger(__name__)

_PREFIX = "drill_"


def temp_database_name(target: str, now: datetime) -> str:
    """``drill_<target>_<UTC time>_<random>``: unique, sortable, at most 63 characters."""
    safe = re.sub(r"[^A-Za-z0-9_]", "_", target)[:30]
    return f"{_PREFIX}{safe}_{now:%Y%m%dT%H%M%S}_{secrets.token_hex(3)}"


def _started(name: str, target: str) -> datetime | None:
    safe = re.sub(r"[^A-Za-z0-9_]", "_", target)[:30]
    match = re.fullmatch(rf"{re.escape(_PREFIX + safe)}_(\d{{8}}T\d{{6}})_[0-9a-f]{{6}}", name)
    return datetime.strptime(match.group(1), "%Y%m%dT%H%M%S").replace(tzinfo=timezone.utc) if match else None




def run_drill(rt: Runtime, target_name: str, *, now: datetime | None = None, actor: str = audit.BEAT,
              drill_class: type | None = None) -> dict:
    """Run one drill for ``target_name``; returns the recorded drill.

    A failed drill is a result, not an exception: it is recorded, audited and emitted as
    ``drill.failed`` with its step's remedy. ``drill_class`` replaces the steps of a kind
    of drill (``mysql_pitr.drill.PitrDrill``: to a moment, for binlog targets;
    ``postgres_pitr.physical_drill.PhysicalDrill``: base + WAL, for physical targets); without it the
    drill is a logical one, and ``drills.run_drill`` is what picks the kind for a
    target. Whatever stopped the drill, the temporary
    database is dropped and the drill recorded first; a task time limit or a bug (an
    error outside the BackupError tree) is then raised again for the worker to see.
    """
    kind = drill_class or _Drill
    drill = kind.start(rt, target_name, now or timefmt.now())
    failure: DrillFailed | None = None
    unexpected: BaseException | None = None
    try:
        drill.run()
    except DrillFailed as exc:
        failure = exc
    except BackupError as exc:
        failure = drill.stopped_by(exc)
    except BaseException as exc:  # noqa: BLE001 - a time limit or a bug: recorded as the drill's failure below, then re-raised
        failure = drill.stopped_by(exc)
        unexpected = exc
    failure = drill.clean_up(failure)
    result = drill.record(failure, actor)
    if unexpected is not None:
        raise unexpected
    return result


#: what stops a drill for taking too long: a database tool past the drill's deadline, or
#: the Celery task's own soft (or hard) time limit
_TIME_LIMITS = (DeadlineExceeded, SoftTimeLimitExceeded, TimeLimitExceeded)


def _failed(step: str, message: str) -> DrillFailed:
    return DrillFailed(message, _remedy(step), step=step)


@dataclass
class _Drill:
    """One drill on its way through its steps; each step adds what it found to ``details``.

    ``details`` is the drill's record (catalog, ``--json``): its keys appear in the order
    the steps add them.
    """

    rt: Runtime
    target: Target
    spec: dict
    source: Source  # a database source: it restores into a server
    #: the drill server, connected to its maintenance database; it gains its password in ``connect``
    server: dsn.Server
    temp: str
    now: datetime
    backup_id: str | None
    drill_id: int
    details: dict
    started: float
    step: str = "select"
    workdir: Path | None = None
    doc: dict | None = None
    created: bool = False
    restore_seconds: float | None = None

    @classmethod
    def start(cls, rt: Runtime, target_name: str, now: datetime) -> _Drill:
        """Pick the newest verified backup and record the drill as started (a bad drill config raises here)."""
        target = rt.target(target_name)
        spec = drill_spec(target)
        source = source_for(target.kind)
        latest = rt.catalog.list(target=target.name, status=Status.VERIFIED, limit=1)
        backup_id = latest[0].id if latest else None
        temp = temp_database_name(target.name, now)
        server = spec["server"].on(spec["server"].database or source.maintenance_db)
        details: dict = {"backup_id": backup_id, "server": server.address, "temp_database": temp, "checks": [],
                         "timeout_seconds": spec["timeout_seconds"]}
        drill_id = rt.catalog.start_drill(target.name, backup_id, details=details)
        return cls(rt=rt, target=target, spec=spec, source=source, server=server, temp=temp, now=now,
                   backup_id=backup_id, drill_id=drill_id, details=details, started=time.monotonic())

    @property
    def deadline(self) -> float:
        return self.started + self.spec["timeout_seconds"]

    def run(self) -> None:
        """The steps in order; ``step`` names the one running, for the failure that stops it."""
        for step, action in (("select", self.select), ("connect", self.connect), ("restore", self.restore),
                             ("compare", self.compare), ("checks", self.checks)):
            self.step = step
            action()

    def stopped_by(self, exc: BaseException) -> DrillFailed:
        """The failure of the step ``exc`` stopped (running out of time is the step 'timeout'); notes its type."""
        self.details["error_type"] = type(exc).__name__
        message = str(exc) if isinstance(exc, BackupError) else f"{type(exc).__name__}: {exc}"
        return _failed("timeout" if isinstance(exc, _TIME_LIMITS) else self.step, message)

    def select(self) -> None:
        if self.backup_id is None:
            raise _failed("select", f"target '{self.target.name}' has no verified backup to drill")

    def connect(self) -> None:
        """Resolve the drill server's password, and drop what killed drills left behind on it."""
        self.server = dsn.with_password(self.server, self.spec["password"], where=f"target '{self.target.name}'",
                                        field_name="drill.password")
        self.details["swept"] = _sweep(self.source, self.server, self.target.name, self.now, self.spec["timeout_seconds"])

    def restore(self) -> None:
        """Restore into the temporary database through the read-back path, digests checked; timed as RTO evidence."""
        found = readback.locate(self.rt, self.rt.catalog.get(self.backup_id))
        self.doc = found.doc
        self.details["location"] = found.tier
        self.workdir = Path(tempfile.mkdtemp(prefix=f"drill-{self.target.name}-", dir=self.rt.staging_root()))
        restore_started = time.monotonic()
        self.source.create_database(self.server, self.temp, self.doc)
        self.created = True
        with readback.plaintext(self.rt, found) as (stream, stored, plain):
            self.source.load(stream, self.doc, self.server.on(self.temp), workdir=self.workdir, deadline=self.deadline)
            plain.drain()
            stored.drain()
            readback.check_digests(self.doc, stored, plain)
        self.restore_seconds = round(time.monotonic() - restore_started, 3)
        self.details["restore_seconds"] = self.restore_seconds

    def compare(self) -> None:
        _compare(self.details, self.doc["source"]["tables"], self.source.table_counts(self.checked_server()))

    def checked_server(self) -> dsn.Server:
        """Where the restored data is: the temporary database on the drill server."""
        return self.server.on(self.temp)

    def checks(self) -> None:
        """Each health check must return true; they share what is left of the drill's time."""
        for sql in self.spec["checks"]:
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                raise _failed("timeout", f"the drill ran past its {self.spec['timeout_seconds']:.0f}s limit "
                                         "before the health checks finished")
            value = self.source.health_check(self.checked_server(), sql, timeout_seconds=remaining)
            self.details["checks"].append({"sql": sql, "value": _jsonable(value), "passed": _is_true(value)})
        bad = [c for c in self.details["checks"] if not c["passed"]]
        if bad:
            raise _failed("checks", f"{len(bad)} health check(s) did not return true: {bad[0]['sql']!r} gave {bad[0]['value']!r}")

    def clean_up(self, failure: DrillFailed | None) -> DrillFailed | None:
        """Drop the temporary database and the scratch directory, whatever happened before.

        A database left behind fails a drill that had passed ('cleanup'): someone must drop it.
        """
        if self.created:
            try:
                self.source.drop_database(self.server, self.temp)
                self.details["temp_database_dropped"] = True
            except Exception as exc:  # noqa: BLE001 - logged, and the drill's record must still be written
                self.details["temp_database_dropped"] = False
                log.exception("drill of %s: could not drop %s on %s", self.target.name, self.temp, self.server.address)
                if failure is None:
                    failure = _failed("cleanup", f"the temporary database {self.temp} could not be dropped: {exc}")
        else:
            self.details["temp_database_dropped"] = True  # never created
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
        return failure

    def record(self, failure: DrillFailed | None, actor: str) -> dict:
        """Finish the drill in the catalog, audit it, emit ``drill.failed`` if it failed; the drill's result."""
        rt, name, details = self.rt, self.target.name, self.details
        details["duration_seconds"] = round(time.monotonic() - self.started, 3)
        result = DrillResult.FAILED if failure else DrillResult.PASSED
        if failure:
            details["failed_step"] = failure.step
            details["error"] = failure.message
        else:
            _write_marker(rt, name, self.backup_id, details, self.restore_seconds)
        rt.catalog.finish_drill(self.drill_id, result=result, details=details, restore_seconds=self.restore_seconds)
        audit.record(rt.catalog, "drill", actor=actor, outcome=str(result), target=name, backup_id=self.backup_id,
                     detail={"drill_id": self.drill_id, "restore_seconds": self.restore_seconds,
                             "failed_step": details.get("failed_step")})
        if failure:
            events.emit(rt.catalog, events.DRILL_FAILED, f"restore drill of target '{name}' failed ({failure.step}): {failure.message}",
                        target=name, host=self.target.host, backup_id=self.backup_id, step=failure.step,
                        drill_id=self.drill_id, remedy=failure.remedy)
        return {"drill_id": self.drill_id, "target": name, "backup_id": self.backup_id, "result": str(result),
                "restore_seconds": self.restore_seconds, **details}


def _write_marker(rt: Runtime, target: str, backup_id: str, details: dict, restore_seconds: float | None) -> None:
    """A signed drilled.json beside the manifest: the drill-proven backup survives a catalog rebuild.

    Like verified.json, it needs the signing key; a drill host without one (it holds
    identities, maybe not the signing key) records the drill in the catalog only, noted.
    Writing it never fails the drill, which did pass.
    """
    try:
        fields = {"target": target, "drilled_at": timefmt.iso(timefmt.now()), "restore_seconds": restore_seconds,
                  "server": details.get("server"), "tables": details.get("tables"), "checks": len(details.get("checks", []))}
        markers.write(manifest.DRILLED_NAME, fields, target=target, backup_id=backup_id, signer=rt.signer, storage=rt.storage,
                      tiers=[loc.tier for loc in rt.catalog.get(backup_id).locations])
    except Exception as exc:  # noqa: BLE001 - see docstring
        log.warning("drill of %s passed, but drilled.json was not written: %s", backup_id, exc)
        details.setdefault("notes", []).append(f"drilled.json not written ({type(exc).__name__}): a rebuilt catalog will not know this drill")


def _compare(details: dict, expected: dict, restored: dict) -> None:
    missing = sorted(set(expected) - set(restored))
    extra = sorted(set(restored) - set(expected))
    differ = {t: {"manifest": expected[t], "restored": restored[t]} for t in sorted(set(expected) & set(restored))
              if expected[t] != restored[t]}
    details["tables"] = {"manifest": len(expected), "restored": len(restored), "rows_manifest": sum(expected.values()),
                         "rows_restored": sum(restored.values()), "missing": missing, "extra": extra, "count_mismatches": differ}
    if missing or extra or differ:
        parts = []
        if missing:
            parts.append(f"missing tables {', '.join(missing[:5])}")
        if extra:
            parts.append(f"unexpected tables {', '.join(extra[:5])}")
        if differ:
            t = next(iter(differ))
            parts.append(f"row counts differ in {len(differ)} table(s), e.g. {t}: manifest {differ[t]['manifest']}, restored {differ[t]['restored']}")
        raise _failed("compare", "; ".join(parts))


def _is_true(value) -> bool:
    """PostgreSQL returns booleans; MySQL returns 1/0 for a comparison. Nothing else counts as true."""
    if value is True:
        return True
    return not isinstance(value, (str, bytes, bool)) and value is not None and value == 1


def _jsonable(value):
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return str(value)


def _remedy(step: str) -> str:
    return {
        "select": "run a backup and let it verify (backupctl backup TARGET --wait)",
        "point": "the live cluster could not be counted: check the target's DSN, password and the role's rights to read and lock tables",
        "wal": "the WAL after the drill's point was not stored in time: check archiving and shipping (backupctl pitr TARGET)",
        "connect": "check the drill server and its password reference (drill.server, drill.password)",
        "restore": "the backup did not restore: check the drill details (backupctl drill history) and verify the backup",
        "compare": "the restored data differs from the manifest: do not trust this backup; investigate and take a new one",
        "checks": "a health check failed on the restored copy: check the query and the data",
        "timeout": "the restore took longer than drill.timeout_seconds: the RTO is not met",
        "cleanup": "drop the temporary database by hand",
    }.get(step, "see the drill details")


def _sweep(source, server, target: str, now: datetime, timeout_seconds: float) -> list[str]:
    """Drop this target's drill databases left behind by a killed worker (older than the timeout)."""
    dropped = []
    for name in source.list_databases(server, _PREFIX):
        started = _started(name, target)
        if started is not None and now - started > timedelta(seconds=timeout_seconds + 600):
            source.drop_database(server, name)
            dropped.append(name)
    return dropped


def history(rt: Runtime, target: str | None = None) -> list[dict]:
    return [dumps_drill(d) for d in rt.catalog.drills(target)]


def dumps_drill(row) -> dict:
    return {"drill_id": row.id, "target": row.target, "backup_id": row.backup_id, "result": row.result,
            "started_at": timefmt.iso(row.started_at), "finished_at": timefmt.iso(row.finished_at),
            "restore_seconds": row.restore_seconds, "details": row.details}
