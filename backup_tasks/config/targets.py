"""The ``[targets.<name>]`` tables: what is backed up, where it runs, when, and where it is stored.

What a kind needs (its required fields, whether it may be stored unencrypted, its
options) is asked of the registered source (``backup_tasks.sources.base``), so a new
source kind needs no change here.
"""

from __future__ import annotations

import os
from typing import Any

from backup_tasks import credentials, defaults, timefmt
from backup_tasks.config import schedules
from backup_tasks.config.checks import NAME_RE, named_tables, str_list, unknown_keys
from backup_tasks.config.drill import drill_spec
from backup_tasks.config.pitr import binlog_fields
from backup_tasks.config.model import Settings, Target, Tier
from backup_tasks.errors import ConfigError
from backup_tasks.sources.base import Source, source_for
from backup_tasks.sources.db import dsn

FIELDS = {
    "kind", "host", "schedule", "storage", "retention", "rpo_hours", "paths", "include", "exclude",
    "path", "dsn", "password", "drill", "options", "mode", "binlog", "pitr_rpo_minutes", "incremental_schedule",
    "differential_schedule",
}
CHAIN_SCHEDULES = ("incremental_schedule", "differential_schedule")


def parse(table: dict, tiers: dict[str, Tier], settings: Settings, file: str) -> dict[str, Target]:
    """Validate every target against the already validated tiers and settings."""
    return {name: _target(name, spec, tiers, settings, file, where) for name, spec, where in named_tables(table, "target", file)}


def _target(name: str, spec: dict, tiers: dict[str, Tier], settings: Settings, file: str, where: str) -> Target:
    kind = spec.get("kind")
    source = _source(kind, file=file, where=where)
    unknown_keys(spec, FIELDS, file=file, where=where)
    for required in source.required_fields:
        if not spec.get(required):
            raise ConfigError(f"a {kind} target needs '{required}'", "see README: Configuration reference", file=file, where=where, field=required)
    host = spec.get("host", "localhost")
    if not isinstance(host, str) or not NAME_RE.match(host):
        raise ConfigError(f"invalid host '{host}'", "use the host's short name: letters, digits, '.', '_' or '-'", file=file, where=where, field="host")
    schedule = spec.get("schedule", defaults.SCHEDULE_BY_KIND.get(kind, defaults.SCHEDULE))
    if "schedule" in spec:  # a default is ours and known good; checking it would import Celery in every command's start-up
        _check_cron(schedule, file=file, where=where)
    chain_schedules = _chain_schedules(spec, source, kind, file=file, where=where)
    storage = _storage(spec.get("storage"), tiers, file=file, where=where)
    retention = spec.get("retention", {})
    if not isinstance(retention, dict):
        raise ConfigError("must be a table", "retention = { keep_last = 3, keep_daily = 7 }", file=file, where=where, field="retention")
    unknown_keys(retention, set(defaults.RETENTION_KEYS), file=file, where=f"{where} retention")
    for key, value in retention.items():
        if key == "keep_within":
            _check_duration(value, file=file, where=where)
        elif isinstance(value, bool) or not isinstance(value, int) or value < 0:  # TOML true is an int to Python
            raise ConfigError(f"{key} must be a whole number >= 0, not {value!r}", f"e.g. {key} = 7", file=file, where=where,
                              field=f"retention.{key}")
    paths = str_list(spec.get("paths", []), file=file, where=where, field="paths")
    for p in paths:
        if not os.path.isabs(p):
            raise ConfigError(f"'{p}' is not an absolute path", "write paths from the root, e.g. /srv/app/uploads", file=file, where=where, field="paths")
    # a path the source cannot work without is where it reads from: relative would depend on the worker's cwd
    if "path" in source.required_fields and not os.path.isabs(spec["path"]):
        raise ConfigError(f"'{spec['path']}' is not an absolute path", "write the database path from the root", file=file, where=where, field="path")
    if spec.get("password") is not None:
        credentials.check_syntax(spec["password"], file=file, where=where, field="password")
    drill = spec.get("drill", {})
    if isinstance(drill, dict) and drill.get("password") is not None:
        credentials.check_syntax(drill["password"], file=file, where=where, field="drill.password")
    if not source.allows_plaintext and not settings.recipients:
        raise ConfigError(
            f"a {kind} target holds secrets and must be encrypted, but no recipients are configured",
            "set recipients = [\"age1...\"] or recipients_file in [settings] (backupctl keys generate makes a key pair)",
            file=file, where=where, field="recipients",
        )
    rpo = spec.get("rpo_hours", defaults.RPO_HOURS)
    if isinstance(rpo, bool) or not isinstance(rpo, (int, float)) or rpo <= 0:
        raise ConfigError(f"must be a positive number of hours, not {rpo!r}", "e.g. rpo_hours = 26 for a nightly backup",
                          file=file, where=where, field="rpo_hours")
    mode = spec.get("mode", "logical")
    modes = getattr(source, "modes", ("logical",))
    if mode not in modes:
        raise ConfigError(f"a {kind} target has no mode {mode!r}", f"use one of: {', '.join(modes)}", file=file, where=where, field="mode")
    target = Target(
        name=name, kind=kind, host=host, schedule=schedule, storage=storage, retention=dict(retention),
        rpo_hours=rpo, paths=tuple(paths),
        include=tuple(str_list(spec.get("include", []), file=file, where=where, field="include")),
        exclude=tuple(str_list(spec.get("exclude", []), file=file, where=where, field="exclude")),
        path=spec.get("path"), dsn=spec.get("dsn"), password=spec.get("password"),
        drill=dict(drill) if isinstance(drill, dict) else {}, options=dict(spec.get("options", {})),
        mode=mode, **chain_schedules, **binlog_fields(spec, kind, file=file, where=where),
    )
    if kind in dsn.SCHEMES:
        _check_database(target, source, file=file)
    return target


def _source(kind: Any, *, file: str, where: str) -> Source:
    """The registered source of ``kind``; ConfigError naming the field otherwise."""
    try:
        return source_for(kind)
    except ConfigError as exc:
        raise ConfigError(f"unknown kind '{kind}'" if kind else "missing kind", exc.remedy, file=file, where=where, field="kind") from None


def _storage(storage: Any, tiers: dict[str, Tier], *, file: str, where: str) -> tuple[str, ...]:
    """The target's tier names; default: the local tier, else the first one defined."""
    if storage is None:
        storage = [defaults.LOCAL_TIER_NAME] if defaults.LOCAL_TIER_NAME in tiers else list(tiers)[:1]
    if isinstance(storage, str):
        storage = [storage]
    if not storage:
        raise ConfigError("a target needs at least one storage tier", f"storage = [{', '.join(repr(t) for t in tiers)}]", file=file, where=where, field="storage")
    for tier in storage:
        if tier not in tiers:
            raise ConfigError(f"unknown tier '{tier}'", f"define [tiers.{tier}] or use one of: {', '.join(tiers)}", file=file, where=where, field="storage")
    return tuple(storage)


def _chain_schedules(spec: dict, source: Source, kind: str, *, file: str, where: str) -> dict[str, str]:
    """``incremental_schedule`` or ``differential_schedule``: one of them, for kinds that build chains."""
    given = {key: spec[key] for key in CHAIN_SCHEDULES if spec.get(key) is not None}
    if given and not getattr(source, "chains", False):
        raise ConfigError(f"a {kind} target has no incremental or differential backups",
                          "remove it; a database's changes between dumps are covered by point-in-time recovery",
                          file=file, where=where, field=next(iter(given)))
    if len(given) > 1:
        raise ConfigError("incremental_schedule and differential_schedule are two ways to fill the days between fulls",
                          "keep one of them", file=file, where=where, field="differential_schedule")
    for key, expr in given.items():
        _check_cron(expr, file=file, where=where, field=key)
    return given


def _check_cron(expr: Any, *, file: str, where: str, field: str = "schedule") -> None:
    try:
        schedules.parse(expr)
    except (ValueError, TypeError) as exc:
        raise ConfigError(
            f"invalid cron expression '{expr}': {exc}",
            'use five fields, e.g. "0 2 * * *" for 02:00 daily, or "@every 4h"',
            file=file, where=where, field=field,
        ) from None


def _check_duration(value: Any, *, file: str, where: str) -> None:
    """keep_within, read now with the rule cleanup applies, so a typo fails at load and not at cleanup."""
    try:
        timefmt.parse_duration(value)
    except ValueError:
        raise ConfigError(f"invalid duration {value!r}", 'use a number of days or a duration such as "7d", "12h", "2w" or "1d12h"',
                          file=file, where=where, field="retention.keep_within") from None


def _check_database(target: Target, source: Source, *, file: str) -> None:
    """A database target's DSN, options and drill settings, touching no server."""
    where = f"target '{target.name}'"
    try:
        dsn.parse_target(target)
        source.check_options(target.options, where=where)
        if target.drill:
            drill_spec(target)
    except ConfigError as exc:
        # the lower layers name where and field but not the file: the message is re-located here
        bare = exc.message.split(": ", 1)[1] if (exc.where or exc.field) and ": " in exc.message else exc.message
        raise ConfigError(bare, exc.remedy, file=file, where=exc.where or where, field=exc.field) from None
