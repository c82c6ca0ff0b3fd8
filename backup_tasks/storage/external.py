"""The ``external`` tier: a local tier on a mounted filesystem (NFS, SMB, a USB disk).

The way such a tier loses backups is a mount that silently went away: the directory is
still there, on the root disk, and backups fill the root disk instead of reaching the
disk that was meant to hold them. So before every write this tier checks that its path
is a mount point (``os.path.ismount``: configure the tier's ``path`` as the place the
disk or share is mounted, e.g. ``/mnt/backup-disk``), that it is writable, and, with
``min_free_bytes``, that enough space would stay free. Otherwise it refuses
(TierUnavailable), writes nothing, and raises an alert event. Being strict about the
mount point itself (not "somewhere below a mount") keeps the rule the same on every
host, whatever else happens to be mounted there.

Reads, listings and deletes need no such check: a missing mount simply holds no objects,
and the same atomic semantics as ``local`` apply (temp file, fsync, rename).
"""

from __future__ import annotations

import logging
import os
from typing import BinaryIO, Callable

from backup_tasks.errors import TierUnavailable
from backup_tasks.storage.base import ObjectInfo, validate_key
from backup_tasks.storage.local import LocalStorage

log = logging.getLogger(__name__)

#: the event kind emitted when an external tier refuses to write (events.TIER_REFUSED)
EVENT_REFUSED = "storage.tier_refused"

Alert = Callable[[str, str, dict], None]  # (message, remedy, detail)


class ExternalStorage(LocalStorage):
    """A LocalStorage that refuses to write unless its path is on a mounted filesystem."""

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

    def check_writable(self, key: str = "", size: int = 0) -> None:
        """Raise TierUnavailable (and alert) unless a put of ``size`` bytes may go ahead."""
        mount = self.root
        if not os.path.ismount(mount):
            self._refuse(
                f"tier '{self.name}': {self.root} is not a mount point, so the external disk or share is not "
                f"there; refusing to write{self._what(key)} (it would fill the filesystem underneath)",
                f"mount the external disk or share at {self.root} (e.g. `mount {self.root}`); "
                "check /etc/fstab and the NAS or USB device",
                key=key, reason="not-mounted")
        probe = mount
        if not os.access(probe, os.W_OK | os.X_OK):
            self._refuse(
                f"tier '{self.name}': {probe} is not writable by uid {os.geteuid()}; refusing to write{self._what(key)}",
                f"remount {mount} read-write or give the worker's user write access to {self.root}",
                key=key, reason="not-writable")
        if self.min_free_bytes:
            vfs = os.statvfs(probe)
            free = vfs.f_bavail * vfs.f_frsize
            if free - size < self.min_free_bytes:
                self._refuse(
                    f"tier '{self.name}': only {free} bytes free on {mount}; writing{self._what(key)} ({size} bytes) "
                    f"would leave less than min_free_bytes = {self.min_free_bytes}",
                    f"free space on {mount} (backupctl cleanup --target ...) or lower min_free_bytes of tier '{self.name}'",
                    key=key, reason="low-space", free_bytes=free)

    def _what(self, key: str) -> str:
        return f" '{key}'" if key else ""

    def _refuse(self, message: str, remedy: str, *, key: str, **detail) -> None:
        if self._alert is not None:
            try:
                self._alert(message, remedy, {"tier": self.name, "path": str(self.root), "key": key, **detail})
            except Exception:  # noqa: BLE001 - the refusal itself must still be raised
                log.exception("tier %r: could not emit the refusal alert", self.name)
        raise TierUnavailable(message, remedy)


def runtime_alert(message: str, remedy: str, detail: dict) -> None:
    """Record the refusal as an error event in the catalog of this process's runtime.

    The event names the run the refused object belongs to (keys are ``<target>/<backup id>/...``),
    so the alert says which target and run, and gives the command that re-runs that target.
    """
    from backup_tasks.records import events
    from backup_tasks.ops import runtime

    rt = runtime.current()
    target, backup_id = _run_of(detail.get("key") or "", rt.config.targets)
    host = rt.config.targets[target].host if target else None
    events.emit(rt.catalog, EVENT_REFUSED, message, target=target, host=host, backup_id=backup_id, remedy=remedy, **detail)


def _run_of(key: str, targets) -> tuple[str | None, str | None]:
    """(target, backup id) of a backup's object key, or (None, None) for a key of no configured target."""
    parts = key.split("/")
    if len(parts) >= 3 and parts[0] in targets and parts[1]:
        return parts[0], parts[1]
    return None, None


def open_external_tier(tier) -> ExternalStorage:
    from backup_tasks.errors import ConfigError

    if not tier.path:
        raise ConfigError("an external tier needs a path", 'add path = "/mnt/backup-disk/backup-tasks"',
                          where=f"tiers.{tier.name}", field="path")
    min_free = tier.options.get("min_free_bytes", 0)
    if not isinstance(min_free, int) or min_free < 0:
        raise ConfigError("must be a whole number of bytes >= 0", where=f"tiers.{tier.name}", field="min_free_bytes")
    return ExternalStorage(tier.name, tier.path, min_free_bytes=min_free, alert=runtime_alert)
