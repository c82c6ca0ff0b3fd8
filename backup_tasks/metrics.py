"""Prometheus metrics per target, read from the catalog at scrape time.

Flower's ``/metrics`` counts tasks; it does not know what a backup is. This exporter
answers the questions an alert rule asks (``backupctl metrics serve --port 9814``):

    backup_last_success_timestamp_seconds{target}     newest run that reached storage (finished time)
    backup_last_verified_timestamp_seconds{target}    verification time of the newest verified backup
    backup_last_size_bytes{target}                    stored size of the newest stored backup
    backup_last_duration_seconds{target}              its duration, start to verified
    backup_last_drill_timestamp_seconds{target}       when the newest finished restore drill ended
    backup_last_drill_passed{target}                  1 passed, 0 failed
    backup_last_drill_restore_seconds{target}         the drill's measured restore time (RTO evidence)
    backup_rpo_seconds{target}                        the target's rpo_hours, in seconds
    backup_verified_data_age_seconds{target}          age of the newest verified backup's data
    backup_rpo_compliant{target}                      1 when that age is within the RPO, else 0
    backup_success_ratio{target}                      verified / runs with an outcome over report_days
    backup_runs{target,status}                        runs in the catalog by status
    backup_storage_bytes{target,tier}                 bytes stored per tier
    backup_wal_lag_seconds{target}                    physical PostgreSQL: age of the newest stored WAL file
    backup_binlog_lag_seconds{target}                 binlog targets: now minus the newest shipped binary log's last event
    backup_binlog_shipped{target}                     binlog targets: binary log files shipped
    backup_binlog_rpo_seconds{target}                 binlog targets: pitr_rpo_minutes, in seconds
    backup_catalog_up                                 1 if the catalog could be read for this scrape

A series is absent, not zero, when there is nothing to report (no drill yet): an alert
on ``backup_last_drill_passed == 0`` must not fire for a target that has no drills.
Nothing here is secret: target and tier names, sizes and times.
"""

from __future__ import annotations

import logging
import time

from prometheus_client.core import CollectorRegistry, GaugeMetricFamily

from backup_tasks.ops import readiness
from backup_tasks.policy.readiness import TargetState
from backup_tasks.records.catalog import Status

log = logging.getLogger(__name__)

PREFIX = "backup_"

#: name -> (help, extra labels beyond "target")
METRICS: dict[str, tuple[str, tuple[str, ...]]] = {
    "last_success_timestamp_seconds": ("Finish time of the newest run that reached storage (uploaded or verified).", ()),
    "last_verified_timestamp_seconds": ("Verification time of the newest verified backup.", ()),
    "last_size_bytes": ("Stored size of the newest stored backup.", ()),
    "last_duration_seconds": ("Duration of the newest stored backup, from start to verified.", ()),
    "last_drill_timestamp_seconds": ("End time of the newest finished restore drill.", ()),
    "last_drill_passed": ("1 if the newest restore drill passed, 0 if it failed.", ()),
    "last_drill_restore_seconds": ("Measured restore time of the newest restore drill (RTO evidence).", ()),
    "rpo_seconds": ("The target's recovery point objective (rpo_hours) in seconds.", ()),
    "verified_data_age_seconds": ("Age of the data in the newest verified backup (now minus its start).", ()),
    "rpo_compliant": ("1 if the newest verified backup is within the RPO, else 0.", ()),
    "success_ratio": ("Verified runs divided by runs with an outcome (verified or not; a run awaiting its verify is not counted) over the report window (report_days).", ()),
    "runs": ("Runs in the catalog by status.", ("status",)),
    "storage_bytes": ("Bytes stored per storage tier (backups not deleted).", ("tier",)),
    "wal_lag_seconds": ("Physical PostgreSQL targets: seconds since the newest stored WAL file was closed.", ()),
    "binlog_lag_seconds": ("Binlog targets: seconds between now and the last event of the newest shipped binary log.", ()),
    "binlog_shipped": ("Binlog targets: binary log files shipped and recorded.", ()),
    "binlog_rpo_seconds": ("Binlog targets: the target's pitr_rpo_minutes in seconds.", ()),
}
CATALOG_UP = PREFIX + "catalog_up"


def metric_names() -> set[str]:
    """Every metric family this exporter can expose (for checking alert rules against)."""
    return {PREFIX + name for name in METRICS} | {CATALOG_UP}


class CatalogCollector:
    """A prometheus_client collector that reads the catalog on every scrape (nothing cached)."""

    def __init__(self, rt) -> None:
        self.rt = rt

    def describe(self):
        # Without describe(), registering would run a full collect() (a catalog read) at start-up.
        yield from self._families().values()
        yield GaugeMetricFamily(CATALOG_UP, "1 if the catalog could be read for this scrape.")

    def collect(self):
        started = time.monotonic()
        try:
            states = readiness.assess(self.rt)
        except Exception:  # noqa: BLE001 - a scrape answers "catalog down" rather than an HTTP 500
            log.exception("metrics: reading the catalog failed")
            yield GaugeMetricFamily(CATALOG_UP, "1 if the catalog could be read for this scrape.", value=0)
            return
        families = self._families()
        for st in states:
            self._add(families, st)
        self._add_wal_lag(families)
        self._add_binlogs(families)
        yield from families.values()
        yield GaugeMetricFamily(CATALOG_UP, "1 if the catalog could be read for this scrape.", value=1)
        log.debug("metrics: %d targets in %.3fs", len(states), time.monotonic() - started)

    def _add_wal_lag(self, f: dict[str, GaugeMetricFamily]) -> None:
        from datetime import datetime, timezone

        from backup_tasks.ops.postgres_pitr.watch import pitr_targets
        from backup_tasks.ops.postgres_pitr.wal import FAMILY

        now = datetime.now(timezone.utc)
        for target in pitr_targets(self.rt):
            newest = self.rt.catalog.newest_log_at(target.name, FAMILY)
            if newest is not None:
                f["wal_lag_seconds"].add_metric([target.name], (now - newest).total_seconds())

    @staticmethod
    def _families() -> dict[str, GaugeMetricFamily]:
        return {name: GaugeMetricFamily(PREFIX + name, help_, labels=["target", *extra]) for name, (help_, extra) in METRICS.items()}

    def _add_binlogs(self, f: dict[str, GaugeMetricFamily]) -> None:
        now = time.time()
        for target in self.rt.config.targets.values():
            if not target.binlog:
                continue
            count, lag = _binlog_lag(self.rt, target.name, now)
            f["binlog_shipped"].add_metric([target.name], count)
            f["binlog_rpo_seconds"].add_metric([target.name], target.pitr_rpo_minutes * 60)
            if lag is not None:  # absent, not zero, before the first log is shipped
                f["binlog_lag_seconds"].add_metric([target.name], lag)

    @staticmethod
    def _add(f: dict[str, GaugeMetricFamily], st: TargetState) -> None:
        t = [st.target]
        if st.last_stored is not None:
            f["last_success_timestamp_seconds"].add_metric(t, (st.last_stored.finished_at or st.last_stored.created_at).timestamp())
            if st.last_stored.size_stored is not None:
                f["last_size_bytes"].add_metric(t, st.last_stored.size_stored)
            if st.last_stored.duration_seconds is not None:
                f["last_duration_seconds"].add_metric(t, st.last_stored.duration_seconds)
        if st.last_verified is not None and st.last_verified.verified_at is not None:
            f["last_verified_timestamp_seconds"].add_metric(t, st.last_verified.verified_at.timestamp())
            f["verified_data_age_seconds"].add_metric(t, st.data_age_seconds)
        drill = st.last_drill
        if drill is not None:
            f["last_drill_timestamp_seconds"].add_metric(t, (drill.finished_at or drill.started_at).timestamp())
            f["last_drill_passed"].add_metric(t, 1 if drill.result == "passed" else 0)
            if drill.restore_seconds is not None:
                f["last_drill_restore_seconds"].add_metric(t, drill.restore_seconds)
        f["rpo_seconds"].add_metric(t, st.rpo_hours * 3600)
        f["rpo_compliant"].add_metric(t, 1 if st.rpo_compliant else 0)
        if st.success_rate is not None:
            f["success_ratio"].add_metric(t, st.success_rate)
        for status in Status:
            f["runs"].add_metric([st.target, status.value], st.runs_by_status.get(status.value, 0))
        for tier, size in sorted(st.storage_by_tier.items()):
            f["storage_bytes"].add_metric([st.target, tier], size)


def _binlog_lag(rt, target: str, now: float) -> tuple[int, float | None]:
    rows = rt.catalog.binlogs(target)
    newest = max((r.last_event_at.timestamp() for r in rows), default=None)
    return len(rows), None if newest is None else max(0.0, now - newest)


def registry_for(rt) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=True)
    registry.register(CatalogCollector(rt))
    return registry


def exposition(rt) -> bytes:
    """The metrics as Prometheus text, once (``backupctl metrics show``; node_exporter's textfile collector)."""
    from prometheus_client import generate_latest

    return generate_latest(registry_for(rt))


def serve(rt, host: str, port: int):
    """Start the HTTP exporter in a background thread; returns (server, thread). /metrics is the page."""
    from prometheus_client import start_http_server

    return start_http_server(port, addr=host, registry=registry_for(rt))
