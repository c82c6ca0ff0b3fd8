"""The tier kinds: what each accepts in the configuration, and how it is opened.

``TIER_KINDS`` maps a kind to a ``TierKind``; a new tier plugs in with
``register_tier_kind`` and needs nothing else changed: the configuration reads from
here which options a kind accepts, whether it needs a path (which the configuration
then resolves and checks, once) and how long its backups are kept by default.

The tier configuration is anything with ``name``, ``kind``, ``path``, ``max_age_days``,
``credentials`` and an ``options`` dict (``backup_tasks.config`` provides it), so this
package does not import the configuration.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Protocol

from backup_tasks.errors import ConfigError
from backup_tasks.storage import s3
from backup_tasks.storage.base import Storage
from backup_tasks.storage.capabilities import Alert, RefusalAlerts
from backup_tasks.storage.external import open_external_tier
from backup_tasks.storage.local import LocalStorage
from backup_tasks.storage.retry import RetryingStorage
from backup_tasks.storage.throttle import ThrottledStorage, parse_rate


class TierConfig(Protocol):
    name: str
    kind: str
    path: Any
    max_age_days: int
    credentials: str | None
    options: dict


@dataclass(frozen=True)
class TierKind:
    """One kind of tier. ``options``: names it accepts besides kind, path, max_age_days,
    credentials and bandwidth_limit. ``needs_path``: the configuration resolves the
    tier's path and refuses a tier without one. ``max_age_days``: the default when the
    tier does not say. ``required``: options a tier of this kind cannot work without,
    refused when the configuration loads."""

    open: Callable[[TierConfig], Storage]
    options: frozenset[str] = frozenset()
    needs_path: bool = False
    max_age_days: int = 30
    required: tuple[str, ...] = ()


TIER_KINDS: dict[str, TierKind] = {}


def register_tier_kind(kind: str, factory: Callable[[TierConfig], Storage], *, options: Iterable[str] = (),
                       needs_path: bool = False, max_age_days: int = 30, required: Iterable[str] = ()) -> None:
    """Make ``kind`` available to the configuration and open_tier; a later registration replaces an earlier one."""
    TIER_KINDS[kind] = TierKind(open=factory, options=frozenset(options) | frozenset(required), needs_path=needs_path,
                                max_age_days=max_age_days, required=tuple(required))


def tier_kind(kind: str, *, where: str = "") -> TierKind:
    """The registered kind; ConfigError naming the kinds there are otherwise."""
    found = TIER_KINDS.get(kind) if isinstance(kind, str) else None  # the file may say kind = 3
    if found is None:
        raise ConfigError(f"unknown tier kind '{kind}'", f"use one of: {', '.join(sorted(TIER_KINDS))}", where=where,
                          field="kind")
    return found


def open_tier(tier: TierConfig, *, on_refused: Alert | None = None) -> Storage:
    """The Storage for one configured tier, with transient failures retried.

    ``on_refused(message, remedy, detail)`` is told each time a tier that may refuse
    writes (an external disk that is not mounted) does so. With ``bandwidth_limit``
    in the tier's options, uploads are throttled inside the retry wrapper, so a
    retried upload is limited too.
    """
    where = f"tiers.{tier.name}"
    storage = tier_kind(tier.kind, where=where).open(tier)
    if on_refused is not None and isinstance(storage, RefusalAlerts):
        storage.alert_refusals_to(on_refused)
    limit = tier.options.get("bandwidth_limit")
    if limit:
        storage = ThrottledStorage(storage, parse_rate(limit, where=where))
    return RetryingStorage(storage)


def _open_local(tier: TierConfig) -> Storage:
    return LocalStorage(tier.name, tier.path)


register_tier_kind("local", _open_local, options={"min_free_bytes"}, needs_path=True)
register_tier_kind("external", open_external_tier, options={"min_free_bytes"}, needs_path=True)
register_tier_kind("s3", s3.open_s3_tier, options=s3.OPTIONS, max_age_days=s3.MAX_AGE_DAYS,
                   required=("bucket",))
