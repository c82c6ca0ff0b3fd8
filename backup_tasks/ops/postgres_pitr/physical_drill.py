"""The drill of a physical PostgreSQL target: the drill's steps, done the way such a target is restored.

Base backup plus WAL replayed into a temporary data directory, started on a free port,
compared with row counts taken in the live cluster at the very WAL position replay stops
at (ops/postgres_pitr/drill.py), then stopped and removed. It shares the logical drill's record,
checks and failure handling (ops/drill.py) and replaces the steps that differ; kept apart
so the drill module holds the common path only. ``drills.run_drill`` picks it for a
physical target.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from backup_tasks import timefmt
from backup_tasks.config.drill import drill_spec
from backup_tasks.errors import DrillFailed
from backup_tasks.ops import drill
from backup_tasks.ops.postgres_pitr import drill as pitr_drill
from backup_tasks.ops.runtime import Runtime
from backup_tasks.records.catalog import Status
from backup_tasks.sources.base import source_for
from backup_tasks.sources.db import dsn

log = logging.getLogger(__name__)


@dataclass
class PhysicalDrill(drill._Drill):
    """A drill of a physical target: counted point in the live cluster, base + WAL to it, compare, checks, remove.

    ``server`` is the live cluster until the copy runs, then the copy; ``temp`` is the
    copy's data directory.
    """

    point: dict | None = None
    scratch: Path | None = None

    @classmethod
    def start(cls, rt: Runtime, target_name: str, now: datetime) -> PhysicalDrill:
        target = rt.target(target_name)
        spec = drill_spec(target)
        latest = rt.catalog.list(target=target.name, status=Status.VERIFIED, limit=1)
        backup_id = latest[0].id if latest else None
        server = dsn.parse_target(target).on(spec["database"])
        details: dict = {"backup_id": backup_id, "database": spec["database"], "checks": [],
                         "timeout_seconds": spec["timeout_seconds"]}
        drill_id = rt.catalog.start_drill(target.name, backup_id, details=details)
        return cls(rt=rt, target=target, spec=spec, source=source_for(target.kind), server=server, temp="", now=now,
                   backup_id=backup_id, drill_id=drill_id, details=details, started=time.monotonic())

    def run(self) -> None:
        for step, action in (("select", self.select), ("point", self.take_point), ("wal", self.wait_for_wal),
                             ("restore", self.restore), ("compare", self.compare), ("checks", self.checks)):
            self.step = step
            action()

    def take_point(self) -> None:
        """Row counts in the live cluster and the WAL position they hold at (see pitr_drill).

        First the copies killed drills left behind are stopped and removed, as a logical
        drill drops their temporary databases.
        """
        self.details["swept"] = pitr_drill.sweep(self.rt, self.target, self.spec["timeout_seconds"] + 600)
        self.point = pitr_drill.take_point(self.target, self.spec["database"])
        self.details["point"] = {"lsn": self.point["lsn"], "at": timefmt.iso(self.point["at"]),
                                 "lock_tries": self.point["lock_tries"], "wal_switched": self.point["switched"]}

    def wait_for_wal(self) -> None:
        doc = self.rt.catalog.get(self.backup_id).manifest or {}
        self.details.update(pitr_drill.wait_for_wal(self.rt, self.target, self.point["lsn"], self.deadline, doc))

    def restore(self) -> None:
        """Base + WAL replayed to the point into a temporary data directory, started; timed as RTO evidence."""
        self.scratch = pitr_drill.scratch_dir(self.rt, self.target.name)
        datadir = self.scratch / "data"
        self.temp = str(datadir)
        self.details["temp_datadir"] = self.temp
        restore_started = time.monotonic()
        done, copy = pitr_drill.restore_copy(self.rt, self.target, self.point, datadir, self.deadline)
        self.server = copy.on(self.spec["database"])
        self.backup_id = done["base_id"]
        self.restore_seconds = round(time.monotonic() - restore_started, 3)
        self.details.update({"backup_id": done["base_id"], "port": done["port"], "reached_lsn": done["reached_lsn"],
                             "timeline": done["timeline"], "restore_seconds": self.restore_seconds})

    def compare(self) -> None:
        drill._compare(self.details, self.point["tables"], self.source.table_counts(self.server))

    def checked_server(self) -> dsn.Server:
        """The started copy, in the drill's database."""
        return self.server

    def clean_up(self, failure: DrillFailed | None) -> DrillFailed | None:
        """Stop the copy and remove its directory, whatever happened before; one left behind fails the drill ('cleanup')."""
        if self.scratch is None:
            self.details["temp_datadir_removed"] = True
            return failure
        try:
            pitr_drill.remove_copy(self.rt, self.target, Path(self.temp), self.scratch)
            self.details["temp_datadir_removed"] = True
        except Exception as exc:  # noqa: BLE001 - logged, and the drill's record must still be written
            self.details["temp_datadir_removed"] = False
            log.exception("drill of %s: could not stop or remove %s", self.target.name, self.scratch)
            if failure is None:
                failure = drill._failed("cleanup", f"the temporary data directory {self.scratch} could not be removed: {exc}")
        return failure
