"""Finding and reading the targets file: TOML, then every table validated, then credential references resolved."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

from backup_tasks import credentials, defaults
from backup_tasks.config import api, host_checks, settings as settings_table, targets as targets_table, tiers as tiers_table
from backup_tasks.config.checks import unknown_keys
from backup_tasks.config.model import Config, Settings, Target, Tier
from backup_tasks.errors import ConfigError


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
    unknown_keys(raw, {"settings", "tiers", "targets", "api"}, file=label, where="top level")
    base = file.parent.resolve()
    settings = settings_table.parse(raw.get("settings", {}), env, base, label)
    tiers = tiers_table.parse(raw.get("tiers", {}), base, label)
    targets = targets_table.parse(raw.get("targets", {}), tiers, settings, label)
    _check_credentials(settings, tiers, targets, label)
    host_checks.check(settings, targets, label)
    return Config(file=label, settings=settings, tiers=tiers, targets=targets, api=api.parse(raw.get("api", {}), base, label))


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
