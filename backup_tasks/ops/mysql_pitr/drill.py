"""Restore drills of binlog targets: restore to a moment just taken, and compare with that moment.

A drill of a ``binlog = true`` target proves what point-in-time recovery promises, not
only the dump. It counts every table's rows in one consistent snapshot of the live
database, together with the binary log position of that same snapshot; ships the logs
(so the moment is stored); restores the newest dump before it into the drill's
temporary database and replays the shipped logs up to exactly that position; then
the counts must be equal, the health checks true, and the temporary database is
dropped. Everything else (selection, sweeping, timing, recording, alerting, cleanup)
is the ordinary drill's.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from backup_tasks import timefmt
from backup_tasks.ops.mysql_pitr import window as gather
from backup_tasks.ops import drill
from backup_tasks.ops.mysql_pitr.restore import fetch
from backup_tasks.ops.mysql_pitr.ship import ship
from backup_tasks.policy import binlog_window
from backup_tasks.sources.db import dsn
from backup_tasks.sources.mysql import binlog_replay, binlog_server


#: a drill on another host than the target's waits this long for the shipping task to store its moment
SHIPPED_WAIT_SECONDS = 300


class PitrDrill(drill._Drill):
    moment: dict | None = None

    def restore(self) -> None:
        target = self.target
        self.moment = binlog_server.snapshot_counts(dsn.for_target(target), target.name)
        self.details["moment"] = {"at": timefmt.iso(self.moment["at"].replace(tzinfo=timefmt.now().tzinfo)),
                                  "file": self.moment["file"], "position": self.moment["position"]}
        self._until_shipped(self.moment["file"])
        plan = binlog_window.plan_to_position(gather.bases(self.rt, target.name), gather.shipped(self.rt, target.name),
                                              self.moment["file"], self.moment["position"])
        self.backup_id = plan.base.backup_id
        self.details["backup_id"] = self.backup_id
        started = time.monotonic()
        super().restore()  # the dump, into the temporary database, digests checked
        rows = {r.name: r for r in self.rt.catalog.binlogs(target.name)}
        scratch = Path(tempfile.mkdtemp(prefix=f"drill-binlogs-{target.name}-", dir=self.rt.staging_root()))
        try:
            files = [fetch(self.rt, rows[name], scratch) for name in plan.files]
            replayed = binlog_replay.replay(files, start_position=plan.start_position, stop_datetime=None,
                                            stop_position=plan.stop_position, source_database=self.doc["source"]["database"],
                                            dest=self.server.on(self.temp), bin_dir=target.options.get("bin_dir"),
                                            deadline=self.deadline)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        self.restore_seconds = round(time.monotonic() - started, 3)
        self.details.update(restore_seconds=self.restore_seconds, binlogs=list(plan.files),
                            last_event=replayed["last_event"], transactions=replayed["transactions"])

    def _until_shipped(self, name: str) -> None:
        """Ship here when this is the target's host (or the embedded default); else wait for the host's shipping.

        Shipping for one target must run on one host: its lock is a file in that host's
        staging directory. A drill host elsewhere waits for the next minute's rotation.
        """
        rt, target = self.rt, self.target
        if rt.settings.embedded or rt.settings.host == target.host:
            self.details["shipped"] = ship(rt, target.name).get("shipped", [])
            return
        give_up = time.monotonic() + SHIPPED_WAIT_SECONDS
        while rt.catalog.binlog(target.name, name) is None:
            if time.monotonic() > give_up:
                raise drill._failed("restore", f"binary log {name} of the drill's moment was not shipped within "
                                               f"{SHIPPED_WAIT_SECONDS} s: is backup.binlog_ship running on host {target.host}?")
            time.sleep(5)

    def compare(self) -> None:
        drill._compare(self.details, self.moment["tables"], self.source.table_counts(self.server.on(self.temp)))

