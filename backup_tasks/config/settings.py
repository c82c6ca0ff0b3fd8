"""The ``[settings]`` table: types, environment overrides (``BACKUP_<SETTING>``), paths, and limits that must agree.

Settings that only make sense together (beat's lock and loop, stage time limits and the
broker's visibility timeout) are checked together here, so a combination that would
misbehave in beat or hand a running stage to a second worker is refused at load time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from backup_tasks import defaults
from backup_tasks.config.alerts import check_settings as check_alert_settings
from backup_tasks.config.checks import unknown_keys
from backup_tasks.config.model import Settings, stage_time_limits
from backup_tasks.errors import ConfigError

FIELDS = {
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
    "run_heartbeat_timeout": int,
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
    "key_max_age_days": int,
    # point-in-time recovery: the host's spool of archived logs, and how PostgreSQL calls backupctl
    "spool_dir": str,
    "spool_max_bytes": int,
    "backupctl_command": str,
}
#: settings that are paths and resolve against the config file's directory
PATH_SETTINGS = ("staging_dir", "spool_dir", "recipients_file", "identities_file", "signing_key_file", "signing_public_key_file")
_WHERE = "[settings]"


def parse(table: Any, env: dict[str, str], base: Path, file: str) -> Settings:
    """Validate ``[settings]`` with the environment's overrides applied; paths resolve against ``base``."""
    if not isinstance(table, dict):
        raise ConfigError("[settings] must be a table", file=file, where="settings")
    unknown_keys(table, set(FIELDS), file=file, where=_WHERE)
    values: dict[str, Any] = dict(table)
    for key, kind in FIELDS.items():
        override = env.get(f"BACKUP_{key.upper()}")
        if override is not None:
            values[key] = [v.strip() for v in override.split(",") if v.strip()] if kind is list else override
            if kind is dict:  # BACKUP_STAGE_SOFT_TIME_LIMITS="dump=3600,upload=7200"
                values[key] = dict(pair.split("=", 1) if "=" in pair else (pair, "") for pair in values[key].split(",") if pair.strip())
    _check_types(values, file)
    if values.get("compression", defaults.COMPRESSION) not in defaults.COMPRESSIONS:
        raise ConfigError(
            f"unknown compression '{values['compression']}'",
            f"use one of: {', '.join(defaults.COMPRESSIONS)}",
            file=file, where=_WHERE, field="compression",
        )
    for key in PATH_SETTINGS:
        if values.get(key):
            values[key] = base / Path(values[key]).expanduser()
    if "catalog_url" in values:
        values["catalog_url"] = _anchor_sqlite_url(values["catalog_url"], base)
    values["recipients"] = _recipients(values.pop("recipients", []), values.pop("recipients_file", None), file)
    values["alerts"] = tuple(values.get("alerts", ()))
    values["report_recipients"] = tuple(values.get("report_recipients", ()))
    check_alert_settings(values, file=file)
    if "staging_dir" not in values:
        values["staging_dir"] = Path(defaults.STAGING_DIR).resolve()
    if "spool_dir" not in values:
        values["spool_dir"] = Path(defaults.SPOOL_DIR).resolve()
    if "catalog_url" not in values:
        values["catalog_url"] = _anchor_sqlite_url(defaults.CATALOG_URL, Path.cwd())
    if values.get("broker_url") and not values.get("result_backend"):
        values["result_backend"] = values["broker_url"]
    _check_distributed(values, file)
    return Settings(**values)


def _check_types(values: dict, file: str) -> None:
    """Coerce whole numbers and (environment) booleans in place; refuse a value of the wrong type."""
    for key, kind in FIELDS.items():
        if key not in values:
            continue
        value = values[key]
        if kind is int:
            if isinstance(value, bool):  # TOML true is an int to Python
                raise ConfigError(f"{str(value).lower()} is not a whole number", f"write a number, e.g. {key} = "
                                  f"{getattr(defaults, key.upper(), 1)}", file=file, where=_WHERE, field=key)
            try:
                values[key] = int(value)
            except (TypeError, ValueError):
                raise ConfigError(f"'{value}' is not a whole number", file=file, where=_WHERE, field=key) from None
        elif kind is bool and isinstance(value, str):  # from the environment
            if value.lower() not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
                raise ConfigError(f"'{value}' is not true or false", file=file, where=_WHERE, field=key)
            values[key] = value.lower() in ("1", "true", "yes", "on")
        elif not isinstance(value, kind):
            raise ConfigError(f"must be a {kind.__name__}", file=file, where=_WHERE, field=key)


def _recipients(listed: list, recipients_file: Path | None, file: str) -> tuple[str, ...]:
    """The age recipients from ``recipients`` and ``recipients_file``, each once, in order."""
    recipients = list(listed)
    if recipients_file:
        try:
            recipients += [ln.strip() for ln in Path(recipients_file).read_text().splitlines() if ln.strip() and not ln.startswith("#")]
        except OSError as exc:
            raise ConfigError(f"cannot read {recipients_file}: {exc.strerror}", "check the path", file=file, where=_WHERE,
                              field="recipients_file") from None
    for rcpt in recipients:
        if not rcpt.startswith("age1"):
            raise ConfigError(
                f"'{rcpt[:12]}...' is not an age X25519 recipient",
                "recipients are public keys starting with 'age1' (backupctl keys generate prints one)",
                file=file, where=_WHERE, field="recipients",
            )
    return tuple(dict.fromkeys(recipients))


def _check_distributed(values: dict, file: str) -> None:
    """Timezone, beat timing, lock TTL and stage time limits: refused here rather than misbehaving in beat."""
    where = _WHERE
    try:
        ZoneInfo(values.get("timezone", defaults.TIMEZONE))
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"unknown timezone '{values['timezone']}'", 'use an IANA name such as "UTC" or "Europe/Berlin"',
                          file=file, where=where, field="timezone") from None
    for key in ("beat_lock_timeout", "beat_max_loop_interval", "reverify_days", "run_lock_ttl", "run_heartbeat_timeout",
                "broker_visibility_timeout", "task_retry_backoff_max", "worker_concurrency"):
        if key in values and values[key] < 1:
            raise ConfigError(f"must be at least 1, not {values[key]}", file=file, where=where, field=key)
    if values.get("key_max_age_days", 0) < 0:
        raise ConfigError(f"must be 0 (no reminder) or more, not {values['key_max_age_days']}", file=file, where=where,
                          field="key_max_age_days")
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
