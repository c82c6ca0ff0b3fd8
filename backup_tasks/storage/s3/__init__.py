"""The ``s3`` tier: any S3-compatible endpoint through boto3 (AWS, MinIO, SeaweedFS, Ceph).

Objects live under ``<prefix><key>`` in one bucket. What the Storage contract asks of a
tier maps onto S3 like this:

- **Atomic put.** An object smaller than one part goes up in a single PUT; a larger one
  as a multipart upload, which S3 shows to nobody until it is completed. Any failure
  (the source broke, a part failed, an integrity check failed) aborts the multipart
  upload, so no orphaned parts are left to be billed. If even the abort cannot reach
  the endpoint, the upload id is remembered and aborted at the next put, and
  ``abort_stale_uploads`` (run by cleanup) catches whatever a crash left behind.
- **Bounded memory.** The source is read in ``defaults.CHUNK_SIZE`` pieces into parts of
  ``part_size`` bytes; at most ``concurrency`` parts are in flight while the next one
  is read. Peak memory is about ``concurrency * part_size`` whatever the object
  size (32 MiB with the defaults), which is why this tier's conformance test allows
  more Python heap than a local tier's.
- **Integrity.** Every part (or single PUT) carries its MD5 in ``Content-MD5``, so the
  server refuses bytes that changed on the way, and the ETag it returns is compared
  with that MD5 (except under SSE-KMS, where ETags are not MD5s). The sha256 of the
  whole object is computed while the bytes pass, as on every tier.
- **Object Lock.** With ``object_lock = "compliance"`` (or ``"governance"``) every
  object is written with that mode and retain-until = upload time + the tier's
  ``max_age_days`` (the bucket must have been created with Object Lock enabled). A
  delete of a locked object raises ObjectLocked; retention plans around locks.
- **Versioned buckets** (every Object Lock bucket is one): ``delete`` removes every
  version of the key, not just adds a delete marker, so deleted really means gone.

Credentials are references resolved when the first request is made (``session``).
Retries: botocore makes at most one quick retry of a request; RetryingStorage (the
wrapper every tier gets) does the backoff. Connection failures become
ServiceUnavailable, throttling and 5xx answers TransientError, everything else a
StorageError whose remedy says what to check (``failures``).

    tier        S3Storage: get, stat, list, delete, probe, stale uploads
    multipart   the put: one PUT or a multipart upload, integrity, aborts
    locking     LockedS3Storage: objects written locked, ``locked_until``
    failures    botocore failures as our errors
    session     credentials, the boto3 session, clients
    options     the tier's options, and ``open_s3_tier``
"""

from backup_tasks.storage.s3.locking import LOCK_MODES, LockedS3Storage
from backup_tasks.storage.s3.multipart import CONCURRENCY, MAX_PARTS, MIN_PART_SIZE, PART_SIZE
from backup_tasks.storage.s3.options import MAX_AGE_DAYS, OPTIONS, SSE_MODES, open_s3_tier
from backup_tasks.storage.s3.session import s3_credentials
from backup_tasks.storage.s3.tier import S3Storage

__all__ = [
    "CONCURRENCY",
    "LOCK_MODES",
    "MAX_AGE_DAYS",
    "MAX_PARTS",
    "MIN_PART_SIZE",
    "OPTIONS",
    "PART_SIZE",
    "SSE_MODES",
    "LockedS3Storage",
    "S3Storage",
    "open_s3_tier",
    "s3_credentials",
]
