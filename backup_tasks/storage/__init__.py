"""Storage tiers: turn a configured tier into a Storage, wrapped for retry.

``TIER_KINDS`` maps a tier kind to a factory taking the tier's configuration; a new
tier plugs in with ``register_tier_kind`` and needs nothing else changed. The tier
configuration is anything with ``name``, ``kind``, ``path`` and an ``options`` dict
(``backup_tasks.config`` provides it), so this package does not import the config.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol

from backup_tasks.errors import ConfigError, StorageError
from backup_tasks.storage.base import ObjectInfo, Storage, validate_key, validate_prefix
from backup_tasks.storage.local import LocalStorage
from backup_tasks.storage.retry import RetryingStorage

__all__ = [
    "ObjectInfo",
    "Storage",
    "LocalStorage",
    "RetryingStorage",
    "TIER_KINDS",
    "open_tier",
    "register_tier_kind",
    "validate_key",
    "validate_prefix",
]


class TierConfig(Protocol):
    name: str
    kind: str
    path: Any
    options: dict


TierFactory = Callable[[TierConfig], Storage]

#: Kinds the design promises but this build does not implement yet; asking for one is
#: a deployment problem (an older build), not a typo, so it gets its own message.
PLANNED_KINDS: tuple[str, ...] = ()


def _open_local(tier: TierConfig) -> Storage:
    if not tier.path:
        raise ConfigError(
            "a local tier needs a path",
            'add path = "/var/backups/backup-tasks" (any directory the worker may write)',
            where=f"tiers.{tier.name}",
            field="path",
        )
    return LocalStorage(tier.name, tier.path)


def _open_external(tier: TierConfig) -> Storage:
    from backup_tasks.storage.external import open_external_tier

    return open_external_tier(tier)


def _open_s3(tier: TierConfig) -> Storage:
    from backup_tasks.storage.s3 import open_s3_tier  # boto3 is imported only by hosts that use S3

    return open_s3_tier(tier)


TIER_KINDS: dict[str, TierFactory] = {"local": _open_local, "external": _open_external, "s3": _open_s3}


def register_tier_kind(kind: str, factory: TierFactory) -> None:
    """Make ``kind`` available to open_tier; a later registration replaces an earlier one."""
    TIER_KINDS[kind] = factory


def open_tier(tier: TierConfig) -> Storage:
    """The Storage for one configured tier, with transient failures retried.

    With ``bandwidth_limit`` in the tier's options, uploads are throttled inside the
    retry wrapper, so a retried upload is limited too.
    """
    factory = TIER_KINDS.get(tier.kind)
    if factory is None:
        available = ", ".join(sorted(TIER_KINDS))
        if tier.kind in PLANNED_KINDS:
            raise StorageError(
                f"tier '{tier.name}': kind '{tier.kind}' is not available in this build",
                f"install a backup-tasks release that includes the '{tier.kind}' tier, "
                f"or use one of: {available}",
            )
        raise ConfigError(
            f"unknown tier kind '{tier.kind}'",
            f"use one of: {available}",
            where=f"tiers.{tier.name}",
            field="kind",
        )
    storage = factory(tier)
    limit = (getattr(tier, "options", None) or {}).get("bandwidth_limit")
    if limit:
        from backup_tasks.storage.throttle import ThrottledStorage, parse_rate

        storage = ThrottledStorage(storage, parse_rate(limit, where=f"tiers.{tier.name}"))
    return RetryingStorage(storage)
