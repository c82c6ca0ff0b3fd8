"""How a wrapper (retry, throttle) has exactly the capabilities of the storage it wraps.

A wrapper that answered every attribute from the storage inside it would let a
caller believe a wrapped local tier can lock objects; one that forwarded nothing would
hide an S3 tier's locks. So ``Wrapper(inner, ...)`` makes an instance of the wrapper's
class extended, for each capability ``inner`` has, by a small mixin that implements it
on top of ``self.inner``; ``isinstance(wrapper, ObjectLock)`` is then the same answer
as ``isinstance(inner, ObjectLock)``. A wrapper changes how a capability is passed on
(the retry wrapper retries some) by naming its own mixin in ``forwarders``, and withholds
one it must not pass on by naming None (the throttle wrapper withholds ``LinkIn``,
because a link would store the bytes without them passing through its limit).
"""

from __future__ import annotations

from datetime import datetime
from functools import lru_cache
from typing import Any, ClassVar, Mapping

from backup_tasks.storage.base import ObjectInfo
from backup_tasks.storage.capabilities import (
    CAPABILITIES,
    Alert,
    DiskSpace,
    DiskState,
    LinkIn,
    ObjectLock,
    PartialWrite,
    PartialWrites,
    Probe,
    RefusalAlerts,
    StaleUploads,
)


class ForwardProbe:
    inner: Any

    def probe(self, timeout: float) -> str:
        return self.inner.probe(timeout)


class ForwardDiskSpace:
    inner: Any

    def disk_state(self) -> DiskState:
        return self.inner.disk_state()


class ForwardObjectLock:
    inner: Any

    def locked_until(self, key: str) -> datetime | None:
        return self.inner.locked_until(key)


class ForwardStaleUploads:
    inner: Any

    def abort_stale_uploads(self, older_than: datetime, *, prefix: str = "", dry_run: bool = False) -> list[str]:
        return self.inner.abort_stale_uploads(older_than, prefix=prefix, dry_run=dry_run)


class ForwardPartialWrites:
    inner: Any

    def remove_partial_writes(self, prefix: str, older_than: datetime, *, dry_run: bool = False) -> list[PartialWrite]:
        return self.inner.remove_partial_writes(prefix, older_than, dry_run=dry_run)


class ForwardRefusalAlerts:
    inner: Any

    def alert_refusals_to(self, alert: Alert | None) -> None:
        self.inner.alert_refusals_to(alert)


class ForwardLinkIn:
    inner: Any

    def link_in(self, key: str, path: str) -> ObjectInfo | None:
        return self.inner.link_in(key, path)


#: capability -> the mixin that passes it on unchanged (None: the wrapper does not have it)
FORWARDERS: Mapping[type, type | None] = {
    Probe: ForwardProbe,
    DiskSpace: ForwardDiskSpace,
    ObjectLock: ForwardObjectLock,
    StaleUploads: ForwardStaleUploads,
    PartialWrites: ForwardPartialWrites,
    RefusalAlerts: ForwardRefusalAlerts,
    LinkIn: ForwardLinkIn,
}


class Wrapper:
    """Base of storage wrappers: the first argument of the constructor is the storage wrapped.

    The instance is of a subclass of the wrapper's class that adds the mixin (from
    ``forwarders``) of every capability of that storage, so it has those and no others.
    """

    #: how each capability is passed on; a wrapper overrides entries to change that
    forwarders: ClassVar[Mapping[type, type | None]] = FORWARDERS

    def __new__(cls, inner: object, *args: object, **kwargs: object):
        present = tuple(cap for cap in CAPABILITIES if isinstance(inner, cap) and cls.forwarders.get(cap) is not None)
        return super().__new__(_with_capabilities(getattr(cls, "_plain", cls), present))


@lru_cache(maxsize=None)
def _with_capabilities(plain: type, present: tuple[type, ...]) -> type:
    """``plain`` itself when ``present`` is empty, else one subclass per set, made once.

    ``present`` holds only capabilities the wrapper passes on (``Wrapper.__new__`` drops
    the ones it withholds).
    """
    if not present:
        return plain
    mixins = tuple(plain.forwarders[cap] for cap in present)
    return type(plain.__name__, (*mixins, plain), {
        "__module__": plain.__module__,
        "__qualname__": plain.__qualname__,
        "__doc__": plain.__doc__,
        "_plain": plain,
    })
