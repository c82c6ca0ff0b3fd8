"""Storage tiers: named byte streams on a disk, a mounted share or an object store.

    base          the Storage contract (five operations) and the key rules
    capabilities  powers some tiers have beyond it (Probe, DiskSpace, ObjectLock ...)
    kinds         the tier kinds, and ``open_tier`` for a configured tier
    local, external, s3   the kinds
    retry, throttle       wrappers with the same interface, forwarding capabilities
    disk          the filesystem under a directory tier, measured once for all

Nothing here imports the configuration, the catalog or the operations above it: a
tier tells those layers something only through a callback it is given.
"""

from __future__ import annotations

from backup_tasks.storage.base import ObjectInfo, Storage, validate_key, validate_prefix
from backup_tasks.storage.kinds import TIER_KINDS, TierConfig, TierKind, open_tier, register_tier_kind, tier_kind
from backup_tasks.storage.local import LocalStorage
from backup_tasks.storage.retry import RetryingStorage

__all__ = [
    "ObjectInfo",
    "Storage",
    "LocalStorage",
    "RetryingStorage",
    "TIER_KINDS",
    "TierConfig",
    "TierKind",
    "open_tier",
    "register_tier_kind",
    "tier_kind",
    "validate_key",
    "validate_prefix",
]
