"""The catalog: an index of runs, locations, verifications and events (SQLAlchemy 2.x).

SQLite by default, any SQLAlchemy URL for multi-host set-ups. It is never the source of
truth for what is stored: ``rebuild`` recreates it from storage manifests alone. Nothing
secret is ever written here; manifests hold key ids and credential references only.

One ``Catalog`` object serves every table, so callers hold one handle and one connection
pool; its methods live beside their tables: ``runs`` (backups, locations, verifications),
``history`` (events, audit), ``drills``, ``alerts`` (rate limits, open conditions), ``logs``
(archived WAL for point-in-time recovery), ``binlogs`` (shipped MySQL/MariaDB binary logs) and
``heartbeats`` (which worker process works on a running run).
"""

from __future__ import annotations

from sqlalchemy.orm import sessionmaker

from backup_tasks.records.catalog.alerts import AlertClaim, Alerts
from backup_tasks.records.catalog.binlogs import BinlogRow, Binlogs
from backup_tasks.records.catalog.drills import Drills
from backup_tasks.records.catalog.heartbeats import Heartbeats
from backup_tasks.records.catalog.history import History
from backup_tasks.records.catalog.logs import Logs
from backup_tasks.records.catalog.runs import Location, Runs, dumps_row
from backup_tasks.records.catalog.schema import (AlertConditionRow, AlertSentRow, AuditRow, BackupRow, DrillResult, DrillRow, EventRow,
                                                 LocationRow, LogObjectRow, VerificationRow, create_schema, open_engine)
from backup_tasks.records.run_status import DONE, FINAL, QUEUED, UNATTRIBUTED, Status


class Catalog(Runs, History, Drills, Alerts, Logs, Binlogs, Heartbeats):
    """Repository over the catalog database; every method is one short transaction."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = open_engine(url)
        self._session = sessionmaker(self.engine, expire_on_commit=False)
        create_schema(self.engine)


__all__ = ["Catalog", "Status", "FINAL", "QUEUED", "DONE", "UNATTRIBUTED", "Location", "BackupRow", "LocationRow",
           "VerificationRow", "LogObjectRow", "EventRow", "AuditRow", "DrillResult", "DrillRow", "AlertSentRow", "AlertConditionRow",
           "AlertClaim", "dumps_row", "BinlogRow"]
