"""Storage tiers: turn a configured tier into a Storage, wrapped for retry.

``TIER_KINDS`` maps a tier kind to its :class:`TierKind`: the factory taking the tier's
configuration, plus what the config loader needs to validate a tier of that kind. A new
tier plugs in with ``register_tier_kind`` and needs nothing else changed. The tier
configuration is anything with ``name``, ``kind``, ``path`` and an ``options`` dict
(``backup_tasks.config`` provides it), so this package does not import the config.
"""

from __future__ import annotations

from dataclasses import dataclass
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
    "TierKind",
    "open_tier",
    "register_tier_kind",
    "tier_kind",
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


@dataclass(frozen=True)
class TierKind:
    """A registered tier kind: how to open one, and what the config loader accepts for it."""

    open: TierFactory
    #: option names this kind accepts besides kind, path, max_age_days, credentials and bandwidth_limit
    options: frozenset[str] = frozenset()
    #: the tier is a directory: the config loader requires ``path`` and resolves it against the file
    needs_path: bool = False
    #: the tier's max_age_days when the targets file does not say
    max_age_days: int = 30
    #: options a tier of this kind cannot work without (refused at load time when missing)
    required: tuple[str, ...] = ()


TIER_KINDS: dict[str, TierKind] = {}


def register_tier_kind(kind: str, factory: TierFactory, *, options=(), needs_path: bool = False, max_age_days: int = 30,
                       required=()) -> None:
    """Make ``kind`` available to open_tier and the config loader; a later registration replaces an earlier one."""
    TIER_KINDS[kind] = TierKind(open=factory, options=frozenset(options) | frozenset(required), needs_path=needs_path,
                                max_age_days=max_age_days, required=tuple(required))


def tier_kind(kind: str) -> TierKind:
    """The registered kind; ConfigError listing the registered kinds otherwise."""
    try:
        return TIER_KINDS[kind]
    except (KeyError, TypeError):  # TypeError: the file said kind = 3 or kind = [..]
        raise ConfigError(f"unknown tier kind '{kind}'", f"use one of: {', '.join(sorted(TIER_KINDS))}", field="kind") from None


# 30 days on disk, 90 in the cloud: what ops teams keep
register_tier_kind("local", _open_local, options={"min_free_bytes"}, needs_path=True)
register_tier_kind("external", _open_external, options={"min_free_bytes"}, needs_path=True)
register_tier_kind("s3", _open_s3, options={"prefix", "endpoint_url", "region", "path_style", "sse", "storage_class", "object_lock"},
                   required=("bucket",), max_age_days=90)


def open_tier(tier: TierConfig) -> Storage:
    """The Storage for one configured tier, with transient failures retried.

    With ``bandwidth_limit`` in the tier's options, uploads are throttled inside the
    retry wrapper, so a retried upload is limited too.
    """
    registered = TIER_KINDS.get(tier.kind)
    if registered is None:
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
    storage = registered.open(tier)
    limit = (getattr(tier, "options", None) or {}).get("bandwidth_limit")
    if limit:
        from backup_tasks.storage.throttle import ThrottledStorage, parse_rate

        storage = ThrottledStorage(storage, parse_rate(limit, where=f"tiers.{tier.name}"))
    return RetryingStorage(storage)
