"""The ``[tiers.<name>]`` tables: where backups are stored.

What a kind accepts (its options, whether it is a directory, its default age limit) is
declared where the kind is registered (``backup_tasks.storage.register_tier_kind``), so
a new tier kind needs no change here.
"""

from __future__ import annotations

from pathlib import Path

from backup_tasks import credentials, defaults
from backup_tasks.config.checks import named_tables, unknown_keys
from backup_tasks.config.model import Tier
from backup_tasks.errors import ConfigError
from backup_tasks.storage import tier_kind
from backup_tasks.storage.throttle import parse_rate

#: fields every tier kind has; the rest of a tier's table are its kind's options
FIELDS = {"kind", "path", "max_age_days", "credentials"}
#: options every kind accepts: uploads are throttled by a wrapper, whatever the tier
COMMON_OPTIONS = {"bandwidth_limit"}


def parse(table: dict, base: Path, file: str) -> dict[str, Tier]:
    """Validate the tiers; relative paths resolve against ``base``. No tiers: the embedded local one."""
    if not table:
        # The embedded default: one local tier under ./backups/store.
        return {defaults.LOCAL_TIER_NAME: Tier(name=defaults.LOCAL_TIER_NAME, kind="local", path=str(Path(defaults.LOCAL_TIER_PATH).resolve()))}
    return {name: _tier(name, spec, base, file, where) for name, spec, where in named_tables(table, "tier", file)}


def _tier(name: str, spec: dict, base: Path, file: str, where: str) -> Tier:
    kind = spec.get("kind")
    try:
        registered = tier_kind(kind)
    except ConfigError as exc:
        raise ConfigError(f"unknown tier kind '{kind}'", exc.remedy, file=file, where=where, field="kind") from None
    unknown_keys(spec, FIELDS | COMMON_OPTIONS | registered.options, file=file, where=where)
    path = spec.get("path")
    if registered.needs_path:
        if not path:
            raise ConfigError(f"this {kind} tier needs a path", 'add path = "/var/backups/backup-tasks"', file=file, where=where, field="path")
        path = str((base / Path(path).expanduser()).resolve())
    for option in registered.required:
        if not spec.get(option):
            raise ConfigError(f"this {kind} tier needs a {option}", f'add {option} = "..."', file=file, where=where, field=option)
    creds = spec.get("credentials")
    if creds is not None:
        credentials.check_syntax(creds, file=file, where=where, field="credentials")
    max_age = spec.get("max_age_days", registered.max_age_days)
    if isinstance(max_age, bool) or not isinstance(max_age, int) or max_age < 1:
        raise ConfigError(f"must be a whole number of days >= 1, not {max_age!r}", "e.g. max_age_days = 30", file=file, where=where,
                          field="max_age_days")
    if "bandwidth_limit" in spec:  # read now with the rule uploads apply, so a typo fails here and not mid-upload
        try:
            parse_rate(spec["bandwidth_limit"])
        except ConfigError as exc:
            raise ConfigError(f"invalid bandwidth_limit {spec['bandwidth_limit']!r}", exc.remedy, file=file, where=where,
                              field="bandwidth_limit") from None
    options = {k: v for k, v in spec.items() if k not in FIELDS}
    return Tier(name=name, kind=kind, path=path, max_age_days=max_age, credentials=creds, options=options)
