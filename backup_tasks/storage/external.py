"""The ``external`` tier: a local tier on a mounted filesystem (NFS, SMB, a USB disk).

The way such a tier loses backups is a mount that silently went away: the directory is
still there, on the root disk, and backups fill the root disk instead of reaching the
disk that was meant to hold them. So before every write this tier checks that its path
is a mount point (``os.path.ismount``: configure the tier's ``path`` as the place the
disk or share is mounted, e.g. ``/mnt/backup-disk``), that it is writable, and, with
``min_free_bytes``, that enough space would stay free. Otherwise it refuses
(TierUnavailable), writes nothing, and tells its ``alert`` callback, which the layer
that opened the tier turns into an event. Being strict about the
mount point itself (not "somewhere below a mount") keeps the rule the same on every
host, whatever else happens to be mounted there.

Reads, listings and deletes need no such check: a missing mount simply holds no objects,
and the same atomic semantics as ``local`` apply (temp file, fsync, rename).
"""

from __future__ import annotations

import logging
import os
from typing import BinaryIO

from backup_tasks.errors import ConfigError, TierUnavailable
from backup_tasks.storage import disk
from backup_tasks.storage.base import ObjectInfo, validate_key
from backup_tasks.storage.capabilities import Alert, DiskState
from backup_tasks.storage.local import LocalStorage

log = logging.getLogger(__name__)


class ExternalStorage(LocalStorage):
    """A LocalStorage that refuses to write unless its path is on a mounted filesystem.

    ``alert`` is called with (message, remedy, detail) before each refusal is raised:
    the layer that opened the tier decides what a refusal becomes (an event, an alert).
    """

    def __init__(self, name: str, path: str | os.PathLike[str], *, min_free_bytes: int = 0,
                 alert: Alert | None = None) -> None:
        super().__init__(name, path)
        self.min_free_bytes = int(min_free_bytes or 0)
        self._alert = alert

    def __repr__(self) -> str:
        return f"ExternalStorage(name={self.name!r}, path={str(self.root)!r})"

    def put(self, key: str, source: BinaryIO, *, size_hint: int | None = None) -> ObjectInfo:
        validate_key(key)
        self.check_writable(key, size_hint or 0)
        return super().put(key, source, size_hint=size_hint)

    def link_in(self, key: str, path: str) -> ObjectInfo | None:
        """The same mount and free-space checks as ``put``, then a link (which takes no new space)."""
        validate_key(key)
        self.check_writable(key, 0)
        return super().link_in(key, path)

    # -- capabilities: Probe, DiskSpace, RefusalAlerts ---------------------------------

    def probe(self, timeout: float) -> str:
        """Mounted, and the mounted directory writable; writes nothing."""
        if not self.mounted():
            raise TierUnavailable(f"{self.root} is not a mount point (the external disk or share is not there)",
                                  self._mount_remedy())
        return super().probe(timeout)

    def disk_state(self) -> DiskState:
        """Whether the disk is mounted, and the free space of the filesystem at the path.

        Unmounted, that is the disk underneath, which says nothing about the tier.
        """
        return DiskState(mounted=self.mounted(), usage=disk.usage(self.root))

    def alert_refusals_to(self, alert: Alert | None) -> None:
        self._alert = alert

    # -- the refusal ---------------------------------------------------------------------

    def mounted(self) -> bool:
        """Whether the path is itself a mount point (not merely somewhere below one)."""
        return os.path.ismount(self.root)

    def check_writable(self, key: str = "", size: int = 0) -> None:
        """Raise TierUnavailable (and alert) unless a put of ``size`` bytes may go ahead."""
        mount = self.root
        if not self.mounted():
            self._refuse(
                f"tier '{self.name}': {mount} is not a mount point, so the external disk or share is not "
                f"there; refusing to write{self._what(key)} (it would fill the filesystem underneath)",
                self._mount_remedy(), key=key, reason="not-mounted")
        if not disk.writable(mount):
            self._refuse(
                f"tier '{self.name}': {mount} is not writable by uid {os.geteuid()}; refusing to write{self._what(key)}",
                f"remount {mount} read-write or give the worker's user write access to {mount}",
                key=key, reason="not-writable")
        usage = disk.usage(mount) if self.min_free_bytes else None
        # Unmeasurable (None): the write itself reports what is wrong with the filesystem.
        if usage is not None and usage.free - size < self.min_free_bytes:
            self._refuse(
                f"tier '{self.name}': only {usage.free} bytes free on {mount}; writing{self._what(key)} ({size} bytes) "
                f"would leave less than min_free_bytes = {self.min_free_bytes}",
                f"free space on {mount} (backupctl cleanup --target ...) or lower min_free_bytes of tier '{self.name}'",
                key=key, reason="low-space", free_bytes=usage.free)

    def _mount_remedy(self) -> str:
        return (f"mount the external disk or share at {self.root} (e.g. `mount {self.root}`); "
                "check /etc/fstab and the NAS or USB device")

    def _what(self, key: str) -> str:
        return f" '{key}'" if key else ""

    def _refuse(self, message: str, remedy: str, *, key: str, **detail) -> None:
        if self._alert is not None:
            try:
                self._alert(message, remedy, {"tier": self.name, "path": str(self.root), "key": key, **detail})
            except Exception:  # noqa: BLE001 - the refusal itself must still be raised; the failure is logged
                log.exception("tier %r: could not emit the refusal alert", self.name)
        raise TierUnavailable(message, remedy)


def open_external_tier(tier) -> ExternalStorage:
    """The ExternalStorage for a configured ``kind = "external"`` tier (its path checked by the config)."""
    min_free = tier.options.get("min_free_bytes", 0)
    if not isinstance(min_free, int) or min_free < 0:
        raise ConfigError("must be a whole number of bytes >= 0", where=f"tiers.{tier.name}", field="min_free_bytes")
    return ExternalStorage(tier.name, tier.path, min_free_bytes=min_free)
