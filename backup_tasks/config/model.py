"""What a loaded targets file is: settings, tiers and targets, immutable once loaded."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backup_tasks import defaults
from backup_tasks.config.api import ApiConfig
from backup_tasks.errors import InputError


@dataclass(frozen=True)
class Settings:
    timezone: str = defaults.TIMEZONE
    staging_dir: Path = Path(defaults.STAGING_DIR)
    catalog_url: str = defaults.CATALOG_URL
    compression: str = defaults.COMPRESSION
    compression_level: int | None = None
    compression_threads: int = defaults.ZSTD_THREADS
    recipients: tuple[str, ...] = ()
    identities_file: Path | None = None
    signing_key_file: Path | None = None
    signing_public_key_file: Path | None = None
    alerts: tuple[str, ...] = ()
    broker_url: str | None = None
    result_backend: str | None = None
    #: this machine's host name in the targets file; limits credential checks to its targets
    host: str | None = None
    #: verify reads one location in full and checks size and upload ETag on the others;
    #: true reads every location in full (slower, and S3 egress)
    verify_all_locations: bool = False
    # -- distributed operation; see defaults.py for why each default is what it is
    beat_lock_timeout: int = defaults.BEAT_LOCK_TIMEOUT
    beat_max_loop_interval: int = defaults.BEAT_MAX_LOOP_INTERVAL
    beat_key_prefix: str = defaults.BEAT_KEY_PREFIX
    #: every stored backup is read back in full at least every this many days
    reverify_days: int = defaults.REVERIFY_DAYS
    run_lock_ttl: int = defaults.RUN_LOCK_TTL
    #: seconds without a heartbeat after which a running stage's worker counts as gone
    run_heartbeat_timeout: int = defaults.RUN_HEARTBEAT_TIMEOUT
    #: per stage (dump, compress, encrypt, upload, verify); missing stages use the defaults
    stage_soft_time_limits: dict[str, int] = field(default_factory=dict)
    stage_hard_time_limits: dict[str, int] = field(default_factory=dict)
    broker_visibility_timeout: int = defaults.BROKER_VISIBILITY_TIMEOUT
    task_max_retries: int = defaults.TASK_MAX_RETRIES
    task_retry_backoff_max: int = defaults.TASK_RETRY_BACKOFF_MAX
    #: worker processes per host (workers/launch.py); default: half the cores, at least 1
    worker_concurrency: int | None = None
    #: also notify when a run is verified (failures are always notified)
    alert_on_success: bool = False
    #: an identical alert is sent at most once per this many minutes (the rest are counted)
    alert_repeat_minutes: int = defaults.ALERT_REPEAT_MINUTES
    #: the watchdog warns when a local or external tier has less free space than this share ...
    alert_min_free_percent: int = defaults.ALERT_MIN_FREE_PERCENT
    #: ... or fewer free bytes than this (or than the tier's own min_free_bytes)
    alert_min_free_bytes: int = 0
    #: a stored artifact below / above this percentage of the median of the target's recent backups is an anomaly
    size_anomaly_min_percent: int = defaults.SIZE_ANOMALY_MIN_PERCENT
    size_anomaly_max_percent: int = defaults.SIZE_ANOMALY_MAX_PERCENT
    #: how many recent backups the median is taken over
    size_anomaly_history: int = defaults.SIZE_ANOMALY_HISTORY
    #: apprise URLs the weekly DR report goes to (default: the alerts URLs)
    report_recipients: tuple[str, ...] = ()
    #: the report's window for success rates and plots
    report_days: int = defaults.REPORT_DAYS
    #: the watchdog reminds to rotate once the current encryption key is older than this (0: never)
    key_max_age_days: int = defaults.KEY_MAX_AGE_DAYS
    #: where ``wal push`` makes each archived log durable before the shipping task uploads it (one 0700 directory per target)
    spool_dir: Path = Path(defaults.SPOOL_DIR)
    #: above this many spooled bytes the shipping task alerts loudly; nothing is ever dropped
    spool_max_bytes: int = defaults.SPOOL_MAX_BYTES
    #: how PostgreSQL runs backupctl in restore_command (the server's environment has no PATH or BACKUP_CONFIG of ours)
    backupctl_command: str = defaults.BACKUPCTL_COMMAND

    def time_limits(self, stage: str) -> tuple[int, int]:
        """(soft, hard) seconds for one chain stage."""
        return stage_time_limits(self.stage_soft_time_limits, self.stage_hard_time_limits, stage)

    @property
    def embedded(self) -> bool:
        """No broker: the chain runs in-process (Celery eager mode)."""
        return not self.broker_url


def stage_time_limits(soft: dict[str, int], hard: dict[str, int], stage: str) -> tuple[int, int]:
    """A stage's (soft, hard) limits: as configured, else the defaults; a hard limit given alone brings its soft one to 90% of it."""
    hard_limit = hard.get(stage, defaults.STAGE_HARD_TIME_LIMIT)
    if stage in soft:
        return soft[stage], hard_limit
    if stage in hard:
        return min(defaults.STAGE_SOFT_TIME_LIMIT, hard_limit * 9 // 10), hard_limit
    return defaults.STAGE_SOFT_TIME_LIMIT, hard_limit


@dataclass(frozen=True)
class Tier:
    name: str
    kind: str
    path: str | None = None
    max_age_days: int = 30
    credentials: str | None = None
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Target:
    name: str
    kind: str
    host: str
    schedule: str
    storage: tuple[str, ...]
    retention: dict[str, Any] = field(default_factory=dict)
    rpo_hours: float = defaults.RPO_HOURS
    paths: tuple[str, ...] = ()
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    path: str | None = None
    dsn: str | None = None
    password: str | None = None
    drill: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    #: how a kind with several ways of reading its source reads it (PostgreSQL: logical or physical)
    mode: str = "logical"
    #: point-in-time recovery: the watchdog alerts when the newest stored log is older than this
    pitr_rpo_minutes: float | None = None
    #: cron of incremental (or differential) runs between the full ones; files and config targets only
    incremental_schedule: str | None = None
    differential_schedule: str | None = None
    #: MySQL/MariaDB: dumps record binlog coordinates and closed binary logs are shipped
    binlog: bool = False

    @property
    def queue(self) -> str:
        """The host queue: a target's whole chain runs where its staging files are."""
        return f"host.{self.host}"

    def redacted(self) -> dict[str, Any]:
        """What may be shown anywhere: credential references, never values (we hold none)."""
        out = {k: v for k, v in self.__dict__.items() if v not in (None, (), {}) and not (k == "binlog" and v is False)}
        out["storage"] = list(self.storage)
        for key in ("paths", "include", "exclude"):
            if key in out:
                out[key] = list(out[key])
        if self.dsn:
            out["dsn"] = re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", self.dsn)
        return out


@dataclass(frozen=True)
class Config:
    file: str
    settings: Settings
    tiers: dict[str, Tier]
    targets: dict[str, Target]
    #: the [api] table (backup_tasks/config/api.py): tokens, restore roots, body limit
    api: ApiConfig = field(default_factory=ApiConfig)

    def target(self, name: str) -> Target:
        try:
            return self.targets[name]
        except KeyError:
            import difflib  # only for a misspelt name: every command loads the model

            close = difflib.get_close_matches(name, self.targets, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise InputError(
                f"unknown target '{name}' in {self.file}",
                f"{hint}known targets: {', '.join(sorted(self.targets)) or 'none'} (backupctl targets)",
            ) from None

    def tiers_of(self, target: Target) -> list[Tier]:
        return [self.tiers[name] for name in target.storage]
