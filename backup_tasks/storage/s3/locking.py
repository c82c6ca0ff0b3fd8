"""An s3 tier with Object Lock: every object written locked, and its lock readable.

With ``object_lock = "compliance"`` (or ``"governance"``) every object is written with
that mode and retain-until = upload time + the tier's ``max_age_days`` (the bucket must
have been created with Object Lock enabled). A delete of a locked object raises
ObjectLocked; retention reads ``locked_until`` and plans around the lock. Only a tier
configured this way has the ObjectLock capability, so a tier without ``object_lock``
is never asked.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from backup_tasks.errors import ObjectNotFound
from backup_tasks.storage.base import validate_key
from backup_tasks.storage.s3.tier import S3Storage, utc

#: the tier option's values and the mode S3 calls each
LOCK_MODES = {"compliance": "COMPLIANCE", "governance": "GOVERNANCE"}


class LockedS3Storage(S3Storage):
    """An S3Storage that writes every object under Object Lock ``lock_mode`` for ``lock_days``."""

    def __init__(self, name: str, bucket: str, client_factory, *, lock_mode: str, lock_days: int, **kwargs: Any) -> None:
        if lock_mode not in LOCK_MODES.values():
            raise ValueError(f"lock_mode must be one of {sorted(LOCK_MODES.values())}")
        if not lock_days:
            raise ValueError("Object Lock needs the number of days to retain (the tier's max_age_days)")
        super().__init__(name, bucket, client_factory, **kwargs)
        self.lock_mode = lock_mode
        self.lock_days = lock_days

    def locked_until(self, key: str) -> datetime | None:
        """The retain-until of ``key``'s Object Lock if it is still in force, else None."""
        full = self._full(validate_key(key))
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=full)
        except Exception as exc:
            if isinstance(self._error("reading", key, exc), ObjectNotFound):
                return None
            self._reraise("reading", key, exc)
        until = head.get("ObjectLockRetainUntilDate")
        if until is None:
            return None
        until = utc(until)
        return until if until > self._clock() else None

    def _object_args(self) -> dict:
        return {**super()._object_args(), "ObjectLockMode": self.lock_mode,
                "ObjectLockRetainUntilDate": self._clock() + timedelta(days=self.lock_days)}
