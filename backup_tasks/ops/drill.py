"""Restore drills: prove, every week, that the latest verified backup of a database restores.

A drill takes the target's newest *verified* backup, restores it into a new database
with a unique name on the target's drill server (``drill = {server, password, checks}``),
and then compares, exactly:

- the set of tables and every table's row count with the signed manifest (the counts
  were taken in the dump's own snapshot, so ``=`` is the right comparison);
- each health-check query's first column, which must be true.

It records the drill in the catalog (result, details, and the measured restore time
as RTO evidence), emits a ``drill.failed`` event when anything failed, and always drops
the temporary database: in ``finally``, on failure and on timeout. A worker killed
outright cannot run ``finally``, so every drill first sweeps this target's leftover
drill databases that are older than the drill timeout.

The restore uses the same source primitives as ``backupctl restore --to-database``,
and the same read-back path as verify: stored sha256, decryption, decompression and
plaintext sha256 are all checked, so a tampered artifact fails the drill.
"""

from __future__ import annotations

import io
import logging
import re
import secrets
import shutil
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from backup_tasks.records import audit, events, manifest
from backup_tasks import credentials
from backup_tasks.sources.db import dsn
from backup_tasks.ops import readback
from backup_tasks.records.catalog import DrillResult, Status
from backup_tasks.errors import BackupError, ConfigError, InputError
from backup_tasks.ops.runtime import Runtime
from backup_tasks.sources.base import source_for

log = logging.getLogger(__name__)

#: a drill may take this long before it is stopped and counted as failed (RTO budget)
DEFAULT_TIMEOUT_SECONDS = 6 * 3600
DRILL_KEYS = {"server", "password", "checks", "timeout_seconds"}
_PREFIX = "drill_"


def temp_database_name(target: str, now: datetime) -> str:
    """``drill_<target>_<UTC time>_<random>``: unique, sortable, at most 63 characters."""
    safe = re.sub(r"[^A-Za-z0-9_]", "_", target)[:30]
    return f"{_PREFIX}{safe}_{now:%Y%m%dT%H%M%S}_{secrets.token_hex(3)}"


def _started(name: str, target: str) -> datetime | None:
    safe = re.sub(r"[^A-Za-z0-9_]", "_", target)[:30]
    match = re.fullmatch(rf"{re.escape(_PREFIX + safe)}_(\d{{8}}T\d{{6}})_[0-9a-f]{{6}}", name)
    return datetime.strptime(match.group(1), "%Y%m%dT%H%M%S").replace(tzinfo=timezone.utc) if match else None


def drill_spec(target) -> dict:
    """The target's validated drill settings; ConfigError naming the field otherwise."""
    where = f"target '{target.name}'"
    if target.kind not in ("postgres", "mysql"):
        raise InputError(f"target '{target.name}' is a {target.kind} target; drills restore postgres and mysql backups",
                         "a SQLite or files backup is proven by backupctl verify")
    spec = dict(target.drill or {})
    unknown = set(spec) - DRILL_KEYS
    if unknown:
        raise ConfigError(f"unknown drill field(s): {', '.join(sorted(unknown))}", f"allowed: {', '.join(sorted(DRILL_KEYS))}",
                          where=where, field="drill")
    if not spec.get("server"):
        raise ConfigError("no drill server configured", 'add drill = { server = "postgresql://drill@drill01:5432/postgres", '
                          'password = "env:DRILL_PASSWORD", checks = ["select count(*) > 0 from students"] }',
                          where=where, field="drill.server")
    checks = spec.get("checks", [])
    if isinstance(checks, str):
        checks = [checks]
    if not isinstance(checks, list) or not all(isinstance(c, str) and c.strip() for c in checks):
        raise ConfigError("must be a list of SQL queries", 'checks = ["select count(*) > 0 from orders"]', where=where, field="drill.checks")
    timeout = spec.get("timeout_seconds", DEFAULT_TIMEOUT_SECONDS)
    if not isinstance(timeout, (int, float)) or timeout <= 0:
        raise ConfigError("must be a positive number of seconds", where=where, field="drill.timeout_seconds")
    if spec.get("password") is not None:
        credentials.check_syntax(spec["password"], file="", where=where, field="drill.password")
    server = dsn.parse(spec["server"], target.kind, where=where, field_name="drill.server")
    return {"server": server, "password": spec.get("password"), "checks": checks, "timeout_seconds": float(timeout)}


class _Failed(Exception):
    def __init__(self, step: str, message: str) -> None:
        super().__init__(message)
        self.step = step


def run_drill(rt: Runtime, target_name: str, *, now: datetime | None = None, actor: str = audit.BEAT) -> dict:
    """Run one drill for ``target_name``; returns the recorded drill (never raises for a failed drill)."""
    target = rt.target(target_name)
    spec = drill_spec(target)
    source = source_for(target.kind)
    now = now or manifest.now()
    latest = rt.catalog.list(target=target.name, status=Status.VERIFIED, limit=1)
    backup_id = latest[0].id if latest else None
    temp = temp_database_name(target.name, now)
    server = spec["server"].on(spec["server"].database or source.maintenance_db)
    details: dict = {"backup_id": backup_id, "server": server.address, "temp_database": temp, "checks": [],
                     "timeout_seconds": spec["timeout_seconds"]}
    drill_id = rt.catalog.start_drill(target.name, backup_id, details=details)
    started = time.monotonic()
    deadline = started + spec["timeout_seconds"]
    restore_seconds = None
    created = False
    step = "select"
    failure: _Failed | None = None
    unexpected: BaseException | None = None
    workdir = Path(tempfile.mkdtemp(prefix=f"drill-{target.name}-", dir=rt.staging_root()))
    try:
        if backup_id is None:
            raise _Failed("select", f"target '{target.name}' has no verified backup to drill")
        step = "connect"
        server = dsn.with_password(server, spec["password"], where=f"target '{target.name}'", field_name="drill.password")
        details["swept"] = _sweep(source, server, target.name, now, spec["timeout_seconds"])
        step = "restore"
        row = rt.catalog.get(backup_id)
        found = readback.locate(rt, row)
        doc = found.doc
        details["location"] = found.tier
        restore_started = time.monotonic()
        source.create_database(server, temp, doc)
        created = True
        with readback.plaintext(rt, found) as (stream, stored, plain):
            source.load(stream, doc, server.on(temp), workdir=workdir, deadline=deadline)
            plain.drain()
            stored.drain()
            readback.check_digests(doc, stored, plain)
        restore_seconds = round(time.monotonic() - restore_started, 3)
        details["restore_seconds"] = restore_seconds
        step = "compare"
        _compare(details, doc["source"]["tables"], source.table_counts(server.on(temp)))
        step = "checks"
        for sql in spec["checks"]:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _Failed("timeout", f"the drill ran past its {spec['timeout_seconds']:.0f}s limit before the health checks finished")
            value = source.health_check(server.on(temp), sql, timeout_seconds=remaining)
            passed = _is_true(value)
            details["checks"].append({"sql": sql, "value": _jsonable(value), "passed": passed})
        bad = [c for c in details["checks"] if not c["passed"]]
        if bad:
            raise _Failed("checks", f"{len(bad)} health check(s) did not return true: {bad[0]['sql']!r} gave {bad[0]['value']!r}")
    except _Failed as exc:
        failure = exc
    except BackupError as exc:
        kind = "timeout" if type(exc).__name__ == "DeadlineExceeded" else step
        failure = _Failed(kind, str(exc))
        details["error_type"] = type(exc).__name__
    except BaseException as exc:  # noqa: BLE001 - a time limit or a bug: record the failed drill, clean up, re-raise
        failure = _Failed("timeout" if type(exc).__name__ in ("SoftTimeLimitExceeded", "TimeLimitExceeded") else step,
                          f"{type(exc).__name__}: {exc}")
        details["error_type"] = type(exc).__name__
        unexpected = exc
    finally:
        if created:
            try:
                source.drop_database(server, temp)
                details["temp_database_dropped"] = True
            except Exception as exc:  # noqa: BLE001
                details["temp_database_dropped"] = False
                log.exception("drill of %s: could not drop %s on %s", target.name, temp, server.address)
                if failure is None:
                    failure = _Failed("cleanup", f"the temporary database {temp} could not be dropped: {exc}")
        else:
            details["temp_database_dropped"] = True  # never created
        shutil.rmtree(workdir, ignore_errors=True)
        details["duration_seconds"] = round(time.monotonic() - started, 3)
        result = DrillResult.FAILED if failure else DrillResult.PASSED
        if failure:
            details["failed_step"] = failure.step
            details["error"] = str(failure)
        if not failure:
            _write_marker(rt, target.name, backup_id, details, restore_seconds)
        rt.catalog.finish_drill(drill_id, result=result, details=details, restore_seconds=restore_seconds)
        audit.record(rt.catalog, "drill", actor=actor, outcome=str(result), target=target.name, backup_id=backup_id,
                     detail={"drill_id": drill_id, "restore_seconds": restore_seconds, "failed_step": details.get("failed_step")})
        if failure:
            events.emit(rt.catalog, events.DRILL_FAILED, f"restore drill of target '{target.name}' failed ({failure.step}): {failure}",
                        target=target.name, host=target.host, backup_id=backup_id, step=failure.step, drill_id=drill_id,
                        remedy=_remedy(failure.step))
    if unexpected is not None:
        raise unexpected
    return {"drill_id": drill_id, "target": target.name, "backup_id": backup_id, "result": str(result),
            "restore_seconds": restore_seconds, **details}


def _write_marker(rt: Runtime, target: str, backup_id: str, details: dict, restore_seconds: float | None) -> None:
    """A signed drilled.json beside the manifest: the drill-proven backup survives a catalog rebuild.

    Like verified.json, it needs the signing key; a drill host without one (it holds
    identities, maybe not the signing key) records the drill in the catalog only, noted.
    Writing it never fails the drill, which did pass.
    """
    try:
        doc = manifest.sign({"format": manifest.FORMAT, "backup_id": backup_id, "target": target, "drilled_at": manifest.iso(manifest.now()),
                             "restore_seconds": restore_seconds, "server": details.get("server"),
                             "tables": details.get("tables"), "checks": len(details.get("checks", []))}, rt.signer)
        body = manifest.dumps(doc)
        for loc in rt.catalog.get(backup_id).locations:
            rt.storage(loc.tier).put(manifest.drilled_key(target, backup_id), io.BytesIO(body))
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
        raise _Failed("compare", "; ".join(parts))


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
            "started_at": manifest.iso(row.started_at), "finished_at": manifest.iso(row.finished_at),
            "restore_seconds": row.restore_seconds, "details": row.details}
