"""What a botocore or urllib3 failure means, in the error tree every tier raises.

Connection failures become ServiceUnavailable and throttling or 5xx answers
TransientError (the retry wrapper tries again); a missing key ObjectNotFound; a delete
refused in a locked or versioned bucket ObjectLocked; everything else a StorageError
whose remedy says what to check. Messages name the tier, bucket and endpoint, never a
credential.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from backup_tasks.errors import ObjectLocked, ServiceUnavailable, StorageError, TransientError

if TYPE_CHECKING:
    from backup_tasks.storage.s3.tier import S3Storage

_TRANSIENT_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "RequestTimeTooSkewed",
                    "InternalError", "ServiceUnavailable", "503", "500", "502", "504"}
_NOT_FOUND_CODES = {"404", "NoSuchKey", "NotFound", "NoSuchVersion"}
_AUTH_CODES = {"AccessDenied", "403", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken",
               "ExpiredToken"}


def error_for(tier: S3Storage, action: str, key: str, exc: Exception) -> Exception:
    """Our error for ``exc``, raised while ``action`` ("reading", "deleting" ...) on ``key``.

    ``exc`` itself when it is already ours, or not the library's (a bug, or the
    source's own error, which must propagate unchanged).
    """
    from botocore import exceptions as bx  # only a host that uses S3 imports botocore

    where = f"tier '{tier.name}': {action} '{key}' in bucket '{tier.bucket}' at {tier.endpoint}"
    if isinstance(exc, bx.ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        text = f"{where} failed: {code or status}: {error.get('Message', '')}".rstrip(": ")
        if code in _NOT_FOUND_CODES or code == "NoSuchUpload" or (status == 404 and code != "NoSuchBucket"):
            return tier.not_found(key)
        if code == "NoSuchBucket":
            return StorageError(text, f"create bucket '{tier.bucket}' (with Object Lock if the tier uses it) "
                                      f"or fix the bucket name of tier '{tier.name}'")
        if action == "deleting" and code == "AccessDenied" and (tier.lock_mode or tier.versioned):
            return ObjectLocked(f"{where} refused: the object is under Object Lock",
                                "it can be deleted once its retain-until date has passed; retention waits for it")
        if code in _AUTH_CODES or status == 403:
            return StorageError(text, f"check the credentials referenced by tier '{tier.name}' and that they "
                                      f"may use bucket '{tier.bucket}'")
        if code in _TRANSIENT_CODES or status >= 500 or status == 429:
            cls = ServiceUnavailable if status == 503 else TransientError
            return cls(text, f"the endpoint of tier '{tier.name}' is overloaded or failing; retry later")
        return StorageError(text, f"check the options of tier '{tier.name}' (bucket, sse, storage_class, object_lock)")
    if isinstance(exc, (bx.NoCredentialsError, bx.PartialCredentialsError)):
        return StorageError(f"{where} failed: no usable credentials",
                            f"set credentials = \"env:NAME\" or \"file:/path\" on tier '{tier.name}'")
    if isinstance(exc, (bx.ConnectionError, bx.HTTPClientError, bx.ResponseStreamingError, ConnectionError,
                        TimeoutError)) or _is_urllib3(exc):
        return ServiceUnavailable(f"{where} failed: cannot reach the endpoint ({type(exc).__name__})",
                                  f"check that {tier.endpoint} is up and reachable from this host")
    return exc  # already ours, a bug, or the source's own error: propagate unchanged


def _is_urllib3(exc: Exception) -> bool:
    try:
        from urllib3.exceptions import HTTPError  # botocore's transport: like botocore, loaded only where S3 is used
    except ImportError:  # pragma: no cover
        return False
    return isinstance(exc, HTTPError)
