"""Powers some tiers have beyond the five operations of ``Storage``, each a small protocol.

A caller asks ``isinstance(storage, ObjectLock)`` and uses what it finds; it never
compares a tier's kind or unwraps a wrapper to look inside. The retry and throttle
wrappers have the capabilities of the storage they wrap (``storage.forward``), so the
question gets the same answer through them; the one exception is that a bandwidth limit
withholds ``LinkIn``, whose link would store bytes without them passing the limit.

    Probe          every kind: is the tier usable right now (GET /health)
    DiskSpace      local and external: mount state and free space (the watchdog)
    ObjectLock     s3 with ``object_lock``: until when a key cannot be deleted
    StaleUploads   s3: abort uploads that were started and never finished
    PartialWrites  local and external: remove temp files of writes that never finished
    RefusalAlerts  external: tells a callback each time it refuses a write
    LinkIn         local and external: store a file already on the tier's filesystem without copying it
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Callable, Protocol, runtime_checkable

from backup_tasks.storage.base import ObjectInfo

#: ``alert(message, remedy, detail)``: how a tier tells a higher layer that it refused a
#: write; ``detail`` holds at least ``tier``, ``path``, ``key`` and ``reason``.
Alert = Callable[[str, str, dict], None]


@dataclass(frozen=True)
class DiskUsage:
    """Bytes of the filesystem that holds a tier: all of it, and what the worker may still use."""

    total: int
    free: int


@dataclass(frozen=True)
class DiskState:
    """What the disk under a tier looks like now.

    ``mounted`` is None when the tier expects no mount of its own (a local tier);
    ``usage`` is None when the filesystem could not be measured.
    """

    mounted: bool | None
    usage: DiskUsage | None


@runtime_checkable
class Probe(Protocol):
    def probe(self, timeout: float) -> str:
        """Check, without writing anything, that the tier could be used now; return what was seen.

        Raises a BackupError saying what is wrong otherwise. Never retried: a probe
        reports what is true now. ``timeout`` bounds a network call; local checks ignore it.
        """
        ...


@runtime_checkable
class DiskSpace(Protocol):
    def disk_state(self) -> DiskState:
        """Mount state and free space of the filesystem this tier writes to."""
        ...


@runtime_checkable
class ObjectLock(Protocol):
    def locked_until(self, key: str) -> datetime | None:
        """When the lock on ``key`` ends if one is still in force, else None (also for a missing key)."""
        ...


@runtime_checkable
class StaleUploads(Protocol):
    def abort_stale_uploads(self, older_than: datetime, *, prefix: str = "", dry_run: bool = False) -> list[str]:
        """Abort uploads of keys under ``prefix`` started before ``older_than`` and never finished; return their keys.

        With ``dry_run`` nothing is aborted and the keys that would be are returned.
        """
        ...


@dataclass(frozen=True)
class PartialWrite:
    """A temporary file a write left behind: the key it was writing, its path in the tier, size and age."""

    key: str
    path: str
    size: int
    modified: datetime


@runtime_checkable
class PartialWrites(Protocol):
    def remove_partial_writes(self, prefix: str, older_than: datetime, *, dry_run: bool = False) -> list[PartialWrite]:
        """Remove the temporary files of writes under ``prefix`` that never finished, last changed before ``older_than``.

        A put killed mid-write (the worker's process died) leaves its temp file behind;
        nothing else ever removes it. Returns what was removed, or with ``dry_run``
        what would be. A temp file younger than ``older_than`` may belong to a put still
        running and is left alone.
        """
        ...


@runtime_checkable
class RefusalAlerts(Protocol):
    def alert_refusals_to(self, alert: Alert | None) -> None:
        """Call ``alert`` each time a write is refused, before the refusal is raised."""
        ...


@runtime_checkable
class LinkIn(Protocol):
    def link_in(self, key: str, path: str) -> ObjectInfo | None:
        """Make the file at ``path`` the object ``key`` without copying its bytes, or return None.

        None means it cannot be done here (the file is on another filesystem, or that
        filesystem has no hard links) and the caller copies with ``put`` instead. When it
        is done, the object is in place atomically, private (0600) and durable, exactly
        as after a ``put``, and shares its data with ``path``: the caller must never
        write into ``path`` again, only unlink it. Nothing is read, so the returned
        ``sha256`` is None; the caller already knows the file's hash and size and
        checks the size returned. A wrapper that must see every byte of a write (a
        bandwidth limit) does not have this capability, so the caller copies through it.
        """
        ...


#: every capability a wrapper may have to forward, in the order ``forward`` names them
CAPABILITIES: tuple[type, ...] = (Probe, DiskSpace, ObjectLock, StaleUploads, PartialWrites, RefusalAlerts, LinkIn)
