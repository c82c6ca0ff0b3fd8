"""The targets file (README: Configure): loaded once, validated fully, then immutable.

Validation happens at load time so that a typo fails the operator's command, not the
backup at 02:00. Every error names the file, the target or tier, and the field.
Environment variables ``BACKUP_<SETTING>`` override ``[settings]``; credentials stay
references (see credentials.py).
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backup_tasks import credentials, defaults
from backup_tasks.config.api import ApiConfig, parse as parse_api
from backup_tasks.errors import ConfigError

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")

SETTINGS_FIELDS = {
    "timezone": str,
    "staging_dir": str,
    "catalog_url": str,
    "compression": str,
    "compression_level": int,
    "compression_threads": int,
    "recipients": list,
    "recipients_file": str,
    "identities_file": str,
    "signing_key_file": str,
    "signing_public_key_file": str,
    "alerts": list,
    "broker_url": str,
    "result_backend": str,
    "host": str,
    "verify_all_locations": bool,
    # -- distributed operation: beat, per-target lock, time limits, retries, workers
    "beat_lock_timeout": int,
    "beat_max_loop_interval": int,
    "beat_key_prefix": str,
    "reverify_days": int,
    "run_lock_ttl": int,
    "stage_soft_time_limits": dict,
    "stage_hard_time_limits": dict,
    "broker_visibility_timeout": int,
    "task_max_retries": int,
    "task_retry_backoff_max": int,
    "worker_concurrency": int,
    # alerts, watchdog, size anomaly and the DR report (README: Alerts, metrics and the DR report)
    "alert_on_success": bool,
    "alert_repeat_minutes": int,
    "alert_min_free_percent": int,
    "alert_min_free_bytes": int,
    "size_anomaly_min_percent": int,
    "size_anomaly_max_percent": int,
    "size_anomaly_history": int,
    "report_recipients": list,
    "report_days": int,
}
#: settings that are paths and resolve against the config file's directory
PATH_SETTINGS = ("staging_dir", "recipients_file", "identities_file", "signing_key_file", "signing_public_key_file")

TIER_FIELDS = {"kind", "path", "max_age_days", "credentials"}
TARGET_FIELDS = {
    "kind", "host", "schedule", "storage", "retention", "rpo_hours", "paths", "include", "exclude",
    "path", "dsn", "password", "drill", "options",
}
REQUIRED_BY_KIND = {"files": ("paths",), "config": ("paths",), "sqlite": ("path",), "postgres": ("dsn",), "mysql": ("dsn",)}


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
    #: per stage (dump, compress, encrypt, upload, verify); missing stages use the defaults
    stage_soft_time_limits: dict[str, int] = field(default_factory=dict)
    stage_hard_time_limits: dict[str, int] = field(default_factory=dict)
    broker_visibility_timeout: int = defaults.BROKER_VISIBILITY_TIMEOUT
    task_max_retries: int = defaults.TASK_MAX_RETRIES
    task_retry_backoff_max: int = defaults.TASK_RETRY_BACKOFF_MAX
    #: worker processes per host (workers/launch.py); default: half the cores, at least 1
    worker_concurrency: int | None = None

    def time_limits(self, stage: str) -> tuple[int, int]:
        """(soft, hard) seconds for one chain stage."""
        return stage_time_limits(self.stage_soft_time_limits, self.stage_hard_time_limits, stage)
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

    @property
    def queue(self) -> str:
        """The host queue: a target's whole chain runs where its staging files are."""
        return f"host.{self.host}"

    def redacted(self) -> dict[str, Any]:
        """What may be shown anywhere: credential references, never values (we hold none)."""
        out = {k: v for k, v in self.__dict__.items() if v not in (None, (), {})}
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
    #: the [api] table (backup_tasks/api/config.py): tokens, restore roots, body limit
    api: ApiConfig = field(default_factory=ApiConfig)

    def target(self, name: str) -> Target:
        from backup_tasks.errors import InputError

        try:
            return self.targets[name]
        except KeyError:
            close = difflib.get_close_matches(name, self.targets, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise InputError(
                f"unknown target '{name}' in {self.file}",
                f"{hint}known targets: {', '.join(sorted(self.targets)) or 'none'} (backupctl targets)",
            ) from None

    def tiers_of(self, target: Target) -> list[Tier]:
        return [self.tiers[name] for name in target.storage]


def locate(path: str | os.PathLike | None) -> Path:
    """The config file to use: --config, then BACKUP_CONFIG, then ./backup-tasks.toml."""
    chosen = path or os.environ.get("BACKUP_CONFIG")
    if chosen:
        return Path(chosen)
    default = Path(defaults.CONFIG_FILE)
    if default.exists():
        return default
    raise ConfigError(
        "no configuration file given",
        f"pass --config FILE, set BACKUP_CONFIG, or create ./{defaults.CONFIG_FILE} (README: Configure)",
    )


def load(path: str | os.PathLike | None = None, *, environ: dict[str, str] | None = None) -> Config:
    """Read, override from the environment and validate; raises ConfigError on the first problem."""
    env = os.environ if environ is None else environ
    file = locate(path)
    label = str(file)
    try:
        raw = tomllib.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError("the configuration file does not exist", "check the path given to --config or BACKUP_CONFIG", file=label) from None
    except tomllib.TOMLDecodeError as exc:
        duplicate = "twice" in str(exc) or "overwrite" in str(exc)
        hint = "each target, tier and key may appear once" if duplicate else "fix the TOML syntax"
        what = "duplicate name or key" if duplicate else "invalid TOML"
        raise ConfigError(f"{what}: {exc}", hint, file=label) from None
    except OSError as exc:
        raise ConfigError(f"cannot read the configuration file: {exc.strerror}", "check its permissions", file=label) from None
    _unknown_keys(raw, {"settings", "tiers", "targets", "api"}, file=label, where="top level")
    base = file.parent.resolve()
    settings = _settings(raw.get("settings", {}), env, base, label)
    tiers = _tiers(raw.get("tiers", {}), base, label)
    targets = _targets(raw.get("targets", {}), tiers, settings, label)
    _check_credentials(settings, tiers, targets, label)
    api = parse_api(raw.get("api", {}), base, label)
    return Config(file=label, settings=settings, tiers=tiers, targets=targets, api=api)


def _unknown_keys(table: dict, allowed: set[str], *, file: str, where: str) -> None:
    for key in table:
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1)
            raise ConfigError(
                f"unknown field '{key}'",
                f"did you mean '{close[0]}'?" if close else f"allowed fields: {', '.join(sorted(allowed))}",
                file=file, where=where, field=key,
            )


def _check_name(name: str, what: str, *, file: str) -> None:
    if not NAME_RE.match(name):
        raise ConfigError(
            f"invalid {what} name '{name}'",
            "use 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit",
            file=file, where=f"{what} '{name}'",
        )


def _settings(table: dict, env: dict[str, str], base: Path, file: str) -> Settings:
    if not isinstance(table, dict):
        raise ConfigError("[settings] must be a table", file=file, where="settings")
    _unknown_keys(table, set(SETTINGS_FIELDS), file=file, where="[settings]")
    values: dict[str, Any] = dict(table)
    for key, kind in SETTINGS_FIELDS.items():
        override = env.get(f"BACKUP_{key.upper()}")
        if override is not None:
            values[key] = [v.strip() for v in override.split(",") if v.strip()] if kind is list else override
            if kind is dict:  # BACKUP_STAGE_SOFT_TIME_LIMITS="dump=3600,upload=7200"
                values[key] = dict(pair.split("=", 1) if "=" in pair else (pair, "") for pair in values[key].split(",") if pair.strip())
    for key, kind in SETTINGS_FIELDS.items():
        if key not in values:
            continue
        value = values[key]
        if kind is int:
            try:
                values[key] = int(value)
            except (TypeError, ValueError):
                raise ConfigError(f"'{value}' is not a whole number", file=file, where="[settings]", field=key) from None
        elif kind is bool and isinstance(value, str):  # from the environment
            if value.lower() not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
                raise ConfigError(f"'{value}' is not true or false", file=file, where="[settings]", field=key)
            values[key] = value.lower() in ("1", "true", "yes", "on")
        elif not isinstance(value, kind):
            raise ConfigError(f"must be a {kind.__name__}", file=file, where="[settings]", field=key)
    if values.get("compression", defaults.COMPRESSION) not in defaults.COMPRESSIONS:
        raise ConfigError(
            f"unknown compression '{values['compression']}'",
            f"use one of: {', '.join(defaults.COMPRESSIONS)}",
            file=file, where="[settings]", field="compression",
        )
    for key in PATH_SETTINGS:
        if values.get(key):
            values[key] = base / Path(values[key]).expanduser()
    if "catalog_url" in values:
        values["catalog_url"] = _anchor_sqlite_url(values["catalog_url"], base)
    recipients = list(values.pop("recipients", []))
    recipients_file = values.pop("recipients_file", None)
    if recipients_file:
        try:
            recipients += [ln.strip() for ln in Path(recipients_file).read_text().splitlines() if ln.strip() and not ln.startswith("#")]
        except OSError as exc:
            raise ConfigError(f"cannot read {recipients_file}: {exc.strerror}", "check the path", file=file, where="[settings]", field="recipients_file") from None
    for rcpt in recipients:
        if not rcpt.startswith("age1"):
            raise ConfigError(
                f"'{rcpt[:12]}...' is not an age X25519 recipient",
                "recipients are public keys starting with 'age1' (backupctl keys generate prints one)",
                file=file, where="[settings]", field="recipients",
            )
    values["recipients"] = tuple(dict.fromkeys(recipients))
    values["alerts"] = tuple(values.get("alerts", ()))
    values["report_recipients"] = tuple(values.get("report_recipients", ()))
    from backup_tasks.config.alerts import check_settings  # alert URLs and thresholds

    check_settings(values, file=file)
    if "staging_dir" not in values:
        values["staging_dir"] = Path(defaults.STAGING_DIR).resolve()
    if "catalog_url" not in values:
        values["catalog_url"] = _anchor_sqlite_url(defaults.CATALOG_URL, Path.cwd())
    if values.get("broker_url") and not values.get("result_backend"):
        values["result_backend"] = values["broker_url"]
    _check_distributed(values, file)
    return Settings(**values)


def _check_distributed(values: dict, file: str) -> None:
    """Timezone, beat timing, lock TTL and stage time limits: refused here rather than misbehaving in beat."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    where = "[settings]"
    try:
        ZoneInfo(values.get("timezone", defaults.TIMEZONE))
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"unknown timezone '{values['timezone']}'", 'use an IANA name such as "UTC" or "Europe/Berlin"',
                          file=file, where=where, field="timezone") from None
    for key in ("beat_lock_timeout", "beat_max_loop_interval", "reverify_days", "run_lock_ttl", "broker_visibility_timeout",
                "task_retry_backoff_max", "worker_concurrency"):
        if key in values and values[key] < 1:
            raise ConfigError(f"must be at least 1, not {values[key]}", file=file, where=where, field=key)
    if values.get("task_max_retries", 0) < 0:
        raise ConfigError("must be 0 or more", file=file, where=where, field="task_max_retries")
    lock = values.get("beat_lock_timeout", defaults.BEAT_LOCK_TIMEOUT)
    loop = values.get("beat_max_loop_interval", defaults.BEAT_MAX_LOOP_INTERVAL)
    if loop * 2 > lock:
        raise ConfigError(f"beat_max_loop_interval ({loop}s) must be at most half of beat_lock_timeout ({lock}s)",
                          "the active beat extends its lock once per loop; e.g. lock 15, loop 5", file=file, where=where,
                          field="beat_max_loop_interval")
    visibility = values.get("broker_visibility_timeout", defaults.BROKER_VISIBILITY_TIMEOUT)
    for key in ("stage_soft_time_limits", "stage_hard_time_limits"):
        table = values.get(key, {})
        for stage, seconds in list(table.items()):
            if stage not in defaults.STAGES:
                raise ConfigError(f"unknown stage '{stage}'", f"use one of: {', '.join(defaults.STAGES)}", file=file, where=where,
                                  field=f"{key}.{stage}")
            try:
                table[stage] = int(seconds)
            except (TypeError, ValueError):
                raise ConfigError(f"'{seconds}' is not a whole number of seconds", file=file, where=where, field=f"{key}.{stage}") from None
            if table[stage] < 1:
                raise ConfigError("must be at least 1 second", file=file, where=where, field=f"{key}.{stage}")
    soft_table, hard_table = values.get("stage_soft_time_limits", {}), values.get("stage_hard_time_limits", {})
    for stage in defaults.STAGES:
        soft, hard = stage_time_limits(soft_table, hard_table, stage)
        if hard <= soft:
            raise ConfigError(f"the hard time limit of stage '{stage}' ({hard}s) must exceed its soft limit ({soft}s)",
                              "the soft limit lets the stage fail cleanly; the hard one kills it a little later",
                              file=file, where=where, field=f"stage_hard_time_limits.{stage}")
        if hard >= visibility:
            raise ConfigError(f"the hard time limit of stage '{stage}' ({hard}s) must be below broker_visibility_timeout ({visibility}s)",
                              "otherwise Redis hands a still-running stage to a second worker; raise broker_visibility_timeout",
                              file=file, where=where, field=f"stage_hard_time_limits.{stage}")


def _anchor_sqlite_url(url: str, base: Path) -> str:
    """A relative SQLite path means relative to the config file, like every other path here."""
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/") and url != "sqlite://" and ":memory:" not in url:
        return prefix + str((base / url[len(prefix):]).resolve())
    return url


def _tiers(table: dict, base: Path, file: str) -> dict[str, Tier]:
    if not table:
        # The embedded default: one local tier under ./backups/store.
        return {defaults.LOCAL_TIER_NAME: Tier(name=defaults.LOCAL_TIER_NAME, kind="local", path=str(Path(defaults.LOCAL_TIER_PATH).resolve()))}
    tiers: dict[str, Tier] = {}
    for name, spec, where in _named_tables(table, "tier", file):
        kind = spec.get("kind")
        if kind not in defaults.TIER_KINDS:
            raise ConfigError(f"unknown tier kind '{kind}'", f"use one of: {', '.join(defaults.TIER_KINDS)}", file=file, where=where, field="kind")
        known = TIER_FIELDS | ({"bucket", "prefix", "endpoint_url", "region", "path_style", "sse", "storage_class", "object_lock", "bandwidth_limit", "min_free_bytes"})
        _unknown_keys(spec, known, file=file, where=where)
        path = spec.get("path")
        if kind in ("local", "external"):
            if not path:
                raise ConfigError("a local or external tier needs a path", 'add path = "/var/backups/backup-tasks"', file=file, where=where, field="path")
            path = str((base / Path(path).expanduser()).resolve())
        if kind == "s3" and not spec.get("bucket"):
            raise ConfigError("an s3 tier needs a bucket", 'add bucket = "backups"', file=file, where=where, field="bucket")
        creds = spec.get("credentials")
        if creds is not None:
            credentials.check_syntax(creds, file=file, where=where, field="credentials")
        max_age = spec.get("max_age_days", defaults.MAX_AGE_DAYS_BY_TIER_KIND[kind])
        if not isinstance(max_age, int) or max_age < 1:
            raise ConfigError("must be a whole number of days >= 1", file=file, where=where, field="max_age_days")
        options = {k: v for k, v in spec.items() if k not in TIER_FIELDS}
        tiers[name] = Tier(name=name, kind=kind, path=path, max_age_days=max_age, credentials=creds, options=options)
    return tiers


def _named_tables(table: dict, what: str, file: str):
    """(name, spec, where) for each [<what>s.<name>] table, names checked and unique ignoring case."""
    seen: dict[str, str] = {}
    for name, spec in table.items():
        _check_name(name, what, file=file)
        where = f"{what} '{name}'"
        if name.lower() in seen:
            raise ConfigError(f"duplicate {what} name (also '{seen[name.lower()]}')", f"{what} names must differ in more than case",
                              file=file, where=where)
        seen[name.lower()] = name
        if not isinstance(spec, dict):
            raise ConfigError("must be a table", file=file, where=where)
        yield name, spec, where


def _targets(table: dict, tiers: dict[str, Tier], settings: Settings, file: str) -> dict[str, Target]:
    return {name: _target(name, spec, tiers, settings, file, where) for name, spec, where in _named_tables(table, "target", file)}


def _target(name: str, spec: dict, tiers: dict[str, Tier], settings: Settings, file: str, where: str) -> Target:
    kind = spec.get("kind")
    if kind not in defaults.SOURCE_KINDS:
        raise ConfigError(
            f"unknown kind '{kind}'" if kind else "missing kind",
            f"use one of: {', '.join(defaults.SOURCE_KINDS)}",
            file=file, where=where, field="kind",
        )
    _unknown_keys(spec, TARGET_FIELDS, file=file, where=where)
    for required in REQUIRED_BY_KIND[kind]:
        if not spec.get(required):
            raise ConfigError(f"a {kind} target needs '{required}'", "see README: Configuration reference", file=file, where=where, field=required)
    host = spec.get("host", "localhost")
    if not isinstance(host, str) or not NAME_RE.match(host):
        raise ConfigError(f"invalid host '{host}'", "use the host's short name: letters, digits, '.', '_' or '-'", file=file, where=where, field="host")
    schedule = spec.get("schedule", defaults.SCHEDULE_BY_KIND[kind])
    _check_cron(schedule, file=file, where=where)
    storage = spec.get("storage")
    if storage is None:
        storage = [defaults.LOCAL_TIER_NAME] if defaults.LOCAL_TIER_NAME in tiers else list(tiers)[:1]
    if isinstance(storage, str):
        storage = [storage]
    if not storage:
        raise ConfigError("a target needs at least one storage tier", f"storage = [{', '.join(repr(t) for t in tiers)}]", file=file, where=where, field="storage")
    for tier in storage:
        if tier not in tiers:
            raise ConfigError(f"unknown tier '{tier}'", f"define [tiers.{tier}] or use one of: {', '.join(tiers)}", file=file, where=where, field="storage")
    retention = spec.get("retention", {})
    if not isinstance(retention, dict):
        raise ConfigError("must be a table", "retention = { keep_last = 3, keep_daily = 7 }", file=file, where=where, field="retention")
    _unknown_keys(retention, set(defaults.RETENTION_KEYS), file=file, where=f"{where} retention")
    for key, value in retention.items():
        if key != "keep_within" and (not isinstance(value, int) or value < 0):
            raise ConfigError(f"{key} must be a whole number >= 0", file=file, where=where, field=f"retention.{key}")
    paths = _str_list(spec.get("paths", []), file=file, where=where, field="paths")
    for p in paths:
        if not os.path.isabs(p):
            raise ConfigError(f"'{p}' is not an absolute path", "write paths from the root, e.g. /srv/app/uploads", file=file, where=where, field="paths")
    if kind == "sqlite" and not os.path.isabs(spec["path"]):
        raise ConfigError(f"'{spec['path']}' is not an absolute path", "write the database path from the root", file=file, where=where, field="path")
    for ref_field in ("password",):
        if spec.get(ref_field) is not None:
            credentials.check_syntax(spec[ref_field], file=file, where=where, field=ref_field)
    drill = spec.get("drill", {})
    if isinstance(drill, dict) and drill.get("password") is not None:
        credentials.check_syntax(drill["password"], file=file, where=where, field="drill.password")
    if kind == "config" and not settings.recipients:
        raise ConfigError(
            "a config target holds secrets (.env files) and must be encrypted, but no recipients are configured",
            "set recipients = [\"age1...\"] or recipients_file in [settings] (backupctl keys generate makes a key pair)",
            file=file, where=where, field="recipients",
        )
    rpo = spec.get("rpo_hours", defaults.RPO_HOURS)
    if not isinstance(rpo, (int, float)) or rpo <= 0:
        raise ConfigError("must be a positive number of hours", file=file, where=where, field="rpo_hours")
    target = Target(
        name=name, kind=kind, host=host, schedule=schedule, storage=tuple(storage), retention=dict(retention),
        rpo_hours=rpo, paths=tuple(paths),
        include=tuple(_str_list(spec.get("include", []), file=file, where=where, field="include")),
        exclude=tuple(_str_list(spec.get("exclude", []), file=file, where=where, field="exclude")),
        path=spec.get("path"), dsn=spec.get("dsn"), password=spec.get("password"),
        drill=dict(drill) if isinstance(drill, dict) else {}, options=dict(spec.get("options", {})),
    )
    if kind in ("postgres", "mysql"):
        from backup_tasks.sources.db.dsn import check_target  # DSN, options and drill settings, touching no server

        check_target(target, file=file)
    return target


def _str_list(value: Any, *, file: str, where: str, field: str) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError("must be a list of strings", file=file, where=where, field=field)
    return value


def _check_cron(expr: Any, *, file: str, where: str) -> None:
    from backup_tasks.config import schedules

    try:
        schedules.parse(expr)
    except (ValueError, TypeError) as exc:
        raise ConfigError(
            f"invalid cron expression '{expr}': {exc}",
            'use five fields, e.g. "0 2 * * *" for 02:00 daily, or "@every 4h"',
            file=file, where=where, field="schedule",
        ) from None


def _check_credentials(settings: Settings, tiers: dict[str, Tier], targets: dict[str, Target], file: str) -> None:
    """Every reference this host will use must resolve now, not at 02:00.

    With BACKUP_HOST set (a worker), only that host's targets are checked: app01 does
    not hold db01's database password, and should not.
    """
    for tier in tiers.values():
        if tier.credentials and tier.credentials.startswith("file:"):
            _resolve_or_fail(tier.credentials, file, f"tier '{tier.name}'", "credentials")
    for target in targets.values():
        if settings.host and target.host != settings.host:
            continue
        if target.password:
            _resolve_or_fail(target.password, file, f"target '{target.name}'", "password")


def _resolve_or_fail(ref: str, file: str, where: str, field: str) -> None:
    issue = credentials.problem(ref)
    if issue:
        raise ConfigError(f"credential reference '{ref}' does not resolve: {issue[0]}", issue[1], file=file, where=where, field=field)
