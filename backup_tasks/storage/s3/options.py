"""The options an s3 tier accepts, and the S3Storage a configured tier becomes.

``OPTIONS`` is what the tier-kind registry declares for ``kind = "s3"``, so the
configuration refuses an unknown option before anything here runs; the values are
checked here, where their meaning is known.
"""

from __future__ import annotations

from backup_tasks.errors import ConfigError
from backup_tasks.storage.s3.locking import LOCK_MODES, LockedS3Storage
from backup_tasks.storage.s3.session import client_factory
from backup_tasks.storage.s3.tier import S3Storage

#: option names of an s3 tier besides kind, path, max_age_days, credentials and bandwidth_limit
OPTIONS = frozenset({"bucket", "prefix", "endpoint_url", "region", "path_style", "sse", "storage_class", "object_lock"})

#: what an object store reports for each; SSE-KMS ETags are not MD5s (multipart)
SSE_MODES = ("AES256", "aws:kms")

#: tiers kept in object storage are kept longer than on disk (90 days, not 30)
MAX_AGE_DAYS = 90


def open_s3_tier(tier) -> S3Storage:
    """The S3Storage for a configured ``kind = "s3"`` tier (see config.Tier); no I/O yet."""
    opts = dict(tier.options)
    where = f"tiers.{tier.name}"
    sse = opts.get("sse")
    if sse is not None and sse not in SSE_MODES:
        raise ConfigError(f"unknown sse '{sse}'", f"use one of: {', '.join(SSE_MODES)}", where=where, field="sse")
    lock_mode = _lock_mode(opts.get("object_lock"), where)
    make_client = client_factory(tier=tier.name, endpoint=opts.get("endpoint_url"), region=opts.get("region"),
                                 path_style=bool(opts.get("path_style", False)), credentials=tier.credentials)
    common = dict(prefix=str(opts.get("prefix") or ""), endpoint=opts.get("endpoint_url"), sse=sse,
                  storage_class=opts.get("storage_class"))
    if lock_mode is None:
        return S3Storage(tier.name, opts["bucket"], make_client, **common)
    return LockedS3Storage(tier.name, opts["bucket"], make_client, lock_mode=lock_mode, lock_days=tier.max_age_days,
                           **common)


def _lock_mode(value: object, where: str) -> str | None:
    """S3's lock mode for the ``object_lock`` option: true means compliance, false or unset none."""
    if value is True:
        value = "compliance"
    if value in (None, False, ""):
        return None
    if isinstance(value, str) and value.lower() in LOCK_MODES:
        return LOCK_MODES[value.lower()]
    raise ConfigError(f"unknown object_lock '{value}'", 'use "compliance", "governance" or false', where=where,
                      field="object_lock")
