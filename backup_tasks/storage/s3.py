"""The ``s3`` tier: any S3-compatible endpoint through boto3 (AWS, MinIO, SeaweedFS, Ceph).

Objects live under ``<prefix><key>`` in one bucket. What the Storage contract asks of a
tier maps onto S3 like this:

- **Atomic put.** An object smaller than one part goes up in a single PUT; a larger one
  as a multipart upload, which S3 shows to nobody until it is completed. Any failure
  (the source broke, a part failed, an integrity check failed) aborts the multipart
  upload, so no orphaned parts are left to be billed. If even the abort cannot reach
  the endpoint, the upload id is remembered and aborted at the next put, and
  ``abort_stale_uploads`` (run by cleanup) catches whatever a crash left behind.
- **Bounded memory.** The source is read in ``CHUNK_SIZE`` pieces into parts of
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

Credentials are references (README: Configure): ``env:NAME`` reads
``NAME_ACCESS_KEY_ID`` and ``NAME_SECRET_ACCESS_KEY`` (and ``NAME_SESSION_TOKEN`` if
set); ``file:/path`` names a 0600 file of ``name = value`` lines with
``access_key_id``, ``secret_access_key`` and optionally ``session_token`` (an ``aws_``
prefix, as in ``~/.aws/credentials``, and ``[section]`` lines are accepted). Without a
reference boto3's own chain applies (instance role, ``~/.aws``). They are resolved when
the first request is made and live only inside the boto3 client; no message, result
or repr carries them.

Retries: botocore makes at most one quick retry of a request; RetryingStorage (the
wrapper every tier gets) does the backoff. Connection failures become
ServiceUnavailable, throttling and 5xx answers TransientError, everything else a
StorageError whose remedy says what to check.
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator, NoReturn

from backup_tasks import credentials as credentials_mod
from backup_tasks.errors import (
    ConfigError,
    InputError,
    ObjectLocked,
    ObjectNotFound,
    ServiceUnavailable,
    StorageError,
    TransientError,
)
from backup_tasks.storage.base import CHUNK_SIZE, ObjectInfo, require_bytes, validate_key, validate_prefix

log = logging.getLogger(__name__)

MiB = 1024 * 1024

#: 8 MiB parts, like boto3's default TransferConfig: few requests, and S3 allows
#: 10,000 parts, i.e. objects up to 80 GB; larger size hints raise the part size.
PART_SIZE = 8 * MiB
MIN_PART_SIZE = 5 * MiB  # S3's own minimum for every part but the last
MAX_PARTS = 10_000

#: parts uploaded at once; with the part being read this bounds memory (module docstring)
CONCURRENCY = 4

LOCK_MODES = {"compliance": "COMPLIANCE", "governance": "GOVERNANCE"}
SSE_MODES = ("AES256", "aws:kms")


_TRANSIENT_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "RequestTimeTooSkewed",
                    "InternalError", "ServiceUnavailable", "503", "500", "502", "504"}
_NOT_FOUND_CODES = {"404", "NoSuchKey", "NotFound", "NoSuchVersion"}
_AUTH_CODES = {"AccessDenied", "403", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken",
               "ExpiredToken"}


class S3Storage:
    """A tier in ``bucket`` under ``prefix``. Construction does no I/O.

    ``client_factory`` returns a boto3 S3 client; it is called once, on first use, so a
    host that never touches this tier never resolves its credentials.
    """

    def __init__(
        self,
        name: str,
        bucket: str,
        client_factory: Callable[[], Any],
        *,
        prefix: str = "",
        endpoint: str | None = None,
        part_size: int = PART_SIZE,
        concurrency: int = CONCURRENCY,
        sse: str | None = None,
        storage_class: str | None = None,
        lock_mode: str | None = None,
        lock_days: int | None = None,
        check_etag: bool | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
    ) -> None:
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"part_size must be at least {MIN_PART_SIZE} bytes (S3's minimum)")
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if lock_mode is not None and lock_mode not in LOCK_MODES.values():
            raise ValueError(f"lock_mode must be one of {sorted(LOCK_MODES.values())}")
        if lock_mode and not lock_days:
            raise ValueError("Object Lock needs the number of days to retain (the tier's max_age_days)")
        self.name = name
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.endpoint = endpoint or "AWS"
        self.part_size = part_size
        self.concurrency = concurrency
        self.sse = sse
        self.storage_class = storage_class
        self.lock_mode = lock_mode
        self.lock_days = lock_days
        # SSE-KMS (and SSE-C) ETags are not the MD5 of the bytes; Content-MD5 still protects the transfer.
        self.check_etag = (sse != "aws:kms") if check_etag is None else check_etag
        self._clock = clock
        self._client_factory = client_factory
        self._client = None
        self._client_lock = threading.Lock()
        self._versioned: bool | None = None
        self._orphans: set[tuple[str, str]] = set()  # (full key, upload id) whose abort failed

    def __repr__(self) -> str:
        return f"S3Storage(name={self.name!r}, bucket={self.bucket!r}, prefix={self.prefix!r}, endpoint={self.endpoint!r})"

    def probe(self, timeout: float) -> None:
        """HEAD the bucket once with a short-lived client bounded by ``timeout`` (GET /health):
        a black-holed endpoint must not leave a thread waiting for the backup client's 120 s."""
        self._client_factory(timeout).head_bucket(Bucket=self.bucket)

    @property
    def client(self):
        with self._client_lock:
            if self._client is None:
                self._client = self._client_factory()
            return self._client

    # -- the Storage interface -------------------------------------------------------

    def put(self, key: str, source: BinaryIO, *, size_hint: int | None = None) -> ObjectInfo:
        """Stream ``source`` up as one PUT or a multipart upload; see the module docstring."""
        full = self._full(validate_key(key))
        self._abort_orphans()
        part_size = self._part_size_for(size_hint)
        digest = hashlib.sha256()
        first, eof = self._read_part(source, key, digest, part_size)
        size = len(first)
        if eof:
            etag = self._put_single(key, full, first)
        else:
            handed = [first]
            del first  # _put_multipart takes it from the list, so no frame here keeps it alive
            etag, size = self._put_multipart(key, full, source, handed, digest, part_size)
        return ObjectInfo(key=key, size=size, modified=self._clock(), sha256=digest.hexdigest(), etag=etag)

    def get(self, key: str) -> BinaryIO:
        """The object's body as a binary stream (its own context manager)."""
        full = self._full(validate_key(key))
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=full)
        except Exception as exc:
            self._reraise("reading", key, exc)
        if _is_directory(response):
            response["Body"].close()
            raise self._not_found(key)
        return io.BufferedReader(_BodyReader(response["Body"], self, key), CHUNK_SIZE)

    def stat(self, key: str) -> ObjectInfo:
        full = self._full(validate_key(key))
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=full)
        except Exception as exc:
            self._reraise("reading", key, exc)
        if _is_directory(head):
            raise self._not_found(key)
        return ObjectInfo(key=key, size=head["ContentLength"], modified=_utc(head["LastModified"]),
                          etag=(head.get("ETag") or "").strip('"') or None)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Keys under ``prefix`` in key order; objects whose names are not valid keys are skipped."""
        validate_prefix(prefix)
        return self._list(prefix)

    def delete(self, key: str) -> None:
        """Remove the key; in a versioned bucket every version of it. ObjectLocked if a version is locked."""
        full = self._full(validate_key(key))
        try:
            if not self._is_versioned():
                self.client.delete_object(Bucket=self.bucket, Key=full)
                return
            for version_id in self._versions(full):
                self.client.delete_object(Bucket=self.bucket, Key=full, VersionId=version_id)
        except Exception as exc:
            self._reraise("deleting", key, exc)

    # -- beyond the interface: Object Lock and multipart debris -----------------------

    def locked_until(self, key: str) -> datetime | None:
        """The retain-until of ``key``'s Object Lock if it is still in force, else None."""
        if not self.lock_mode and not self._is_versioned():
            return None
        full = self._full(validate_key(key))
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=full)
        except Exception as exc:
            err = self._error("reading", key, exc)
            if isinstance(err, ObjectNotFound):
                return None
            self._reraise("reading", key, exc)
        until = head.get("ObjectLockRetainUntilDate")
        if until is None:
            return None
        until = _utc(until)
        return until if until > self._clock() else None

    def incomplete_uploads(self) -> list[dict]:
        """Multipart uploads under this tier's prefix that were started and never finished."""
        out, kwargs = [], {"Bucket": self.bucket, "Prefix": self.prefix}
        try:
            while True:
                page = self.client.list_multipart_uploads(**kwargs)
                for up in page.get("Uploads", []) or []:
                    out.append({"key": up["Key"][len(self.prefix):], "upload_id": up["UploadId"],
                                "initiated": _utc(up["Initiated"])})
                if not page.get("IsTruncated"):
                    return out
                kwargs.update(KeyMarker=page.get("NextKeyMarker", ""), UploadIdMarker=page.get("NextUploadIdMarker", ""))
        except Exception as exc:
            self._reraise("listing uploads", self.prefix or "/", exc)

    def abort_stale_uploads(self, older_than: datetime, *, dry_run: bool = False) -> list[str]:
        """Abort multipart uploads started before ``older_than`` (and any this process failed to abort)."""
        aborted = []
        if not dry_run:
            aborted += [full[len(self.prefix):] for full, _ in self._abort_orphans()]
        for up in self.incomplete_uploads():
            if up["initiated"] < older_than:
                if not dry_run:
                    self._abort(self._full(up["key"]), up["upload_id"])
                aborted.append(up["key"])
        return aborted

    # -- put internals ---------------------------------------------------------------

    def _part_size_for(self, size_hint: int | None) -> int:
        if size_hint and size_hint > self.part_size * MAX_PARTS:
            return -(-size_hint // (MAX_PARTS - 100) // MiB) * MiB  # round up to whole MiB, keep headroom
        return self.part_size

    def _read_part(self, source: BinaryIO, key: str, digest, part_size: int) -> tuple[bytearray, bool]:
        """Up to ``part_size`` bytes and whether the source ended.

        Chunks are copied into one preallocated buffer as they arrive, so a part costs
        its own size and not twice that (no list of chunks joined at the end).
        """
        buf, have = bytearray(part_size), 0
        view = memoryview(buf)
        try:
            while have < part_size:
                chunk = source.read(min(CHUNK_SIZE, part_size - have))  # errors of the source propagate unchanged
                if not chunk:
                    break
                require_bytes(chunk, tier=self.name, key=key)
                n = len(chunk)
                if have + n > part_size:  # a source that returns more than asked for
                    raise InputError(f"tier '{self.name}': source for '{key}' returned more bytes than requested",
                                     "pass a regular binary stream")
                view[have:have + n] = chunk
                digest.update(chunk)
                have += n
        finally:
            view.release()
        if have < part_size:
            del buf[have:]
            return buf, True
        return buf, False

    def _object_args(self) -> dict:
        args: dict[str, Any] = {}
        if self.sse:
            args["ServerSideEncryption"] = self.sse
        if self.storage_class:
            args["StorageClass"] = self.storage_class
        if self.lock_mode:
            args["ObjectLockMode"] = self.lock_mode
            args["ObjectLockRetainUntilDate"] = self._clock() + timedelta(days=self.lock_days)
        return args

    def _put_single(self, key: str, full: str, data: bytearray) -> str:
        md5 = hashlib.md5(data)
        try:
            response = self.client.put_object(Bucket=self.bucket, Key=full, Body=_PartBody(data),
                                              ContentMD5=base64.b64encode(md5.digest()).decode(), **self._object_args())
        except Exception as exc:
            self._reraise("writing", key, exc)
        etag = (response.get("ETag") or "").strip('"')
        if self.check_etag and etag != md5.hexdigest():
            self._delete_quietly(full)
            raise self._integrity(key, f"the server's ETag {etag!r} is not the MD5 of the bytes sent")
        return etag

    def _put_multipart(self, key: str, full: str, source: BinaryIO, handed: list, digest, part_size: int) -> tuple[str, int]:
        try:
            upload_id = self.client.create_multipart_upload(Bucket=self.bucket, Key=full, **self._object_args())["UploadId"]
        except Exception as exc:
            self._reraise("writing", key, exc)
        size = len(handed[0])
        pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix=f"s3-{self.name}")
        in_flight: deque[Future] = deque()
        done: list[dict] = []
        try:
            data, number, eof = handed.pop(), 1, False
            while True:
                in_flight.append(pool.submit(self._upload_part, key, full, upload_id, number, data))
                del data  # the pool holds the only reference now: memory stays bounded
                # At most concurrency - 1 parts in flight while the next one is read.
                while len(in_flight) >= self.concurrency or (in_flight and in_flight[0].done()):
                    done.append(in_flight.popleft().result())  # a failed part raises here, early
                if eof:
                    break
                data, eof = self._read_part(source, key, digest, part_size)
                if not data:
                    break
                size += len(data)
                number += 1
            while in_flight:
                done.append(in_flight.popleft().result())
            parts = sorted(done, key=lambda p: p["PartNumber"])
            try:
                response = self.client.complete_multipart_upload(
                    Bucket=self.bucket, Key=full, UploadId=upload_id, MultipartUpload={"Parts": parts})
            except Exception as exc:
                self._reraise("writing", key, exc)
        except BaseException:
            for future in in_flight:
                future.cancel()
            pool.shutdown(wait=True, cancel_futures=True)
            self._abort(full, upload_id)
            raise
        pool.shutdown(wait=True)
        etag = (response.get("ETag") or "").strip('"')
        if self.check_etag:
            expected = hashlib.md5(b"".join(bytes.fromhex(p["ETag"].strip('"')) for p in parts)).hexdigest() + f"-{len(parts)}"
            if etag != expected:
                self._delete_quietly(full)
                raise self._integrity(key, f"the completed object's ETag {etag!r} is not {expected!r}")
        return etag, size

    def _upload_part(self, key: str, full: str, upload_id: str, number: int, data: bytearray) -> dict:
        md5 = hashlib.md5(data)  # hashlib releases the GIL: parts hash in parallel
        try:
            response = self.client.upload_part(Bucket=self.bucket, Key=full, UploadId=upload_id, PartNumber=number,
                                               Body=_PartBody(data), ContentMD5=base64.b64encode(md5.digest()).decode())
        except Exception as exc:
            self._reraise("writing", key, exc)
        etag = (response.get("ETag") or "").strip('"')
        if self.check_etag and etag != md5.hexdigest():
            raise self._integrity(key, f"part {number}: the server's ETag {etag!r} is not the MD5 of the bytes sent")
        return {"PartNumber": number, "ETag": response["ETag"]}

    def _abort(self, full: str, upload_id: str) -> None:
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=full, UploadId=upload_id)
            self._orphans.discard((full, upload_id))
        except Exception as exc:  # noqa: BLE001 - the original failure is the one to report
            err = self._error("aborting upload", full, exc)
            if isinstance(err, ObjectNotFound):  # NoSuchUpload: already gone
                self._orphans.discard((full, upload_id))
                return
            log.warning("tier %r: could not abort multipart upload of %r (%s); will retry later", self.name, full, err)
            self._orphans.add((full, upload_id))

    def _abort_orphans(self) -> list[tuple[str, str]]:
        pending = list(self._orphans)
        for full, upload_id in pending:
            self._abort(full, upload_id)
        return [p for p in pending if p not in self._orphans]

    def _delete_quietly(self, full: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=full)
        except Exception:  # noqa: BLE001 - reporting the integrity failure matters more
            log.warning("tier %r: could not remove %r after a failed integrity check", self.name, full)

    # -- other internals -------------------------------------------------------------

    def _list(self, prefix: str) -> Iterator[ObjectInfo]:
        # AWS lists in key order, but filer-backed servers (SeaweedFS) walk directories,
        # which puts "a/b/c" before "a-b". The contract (and RetryingStorage's resume)
        # needs key order, so the listing of the prefix is gathered and sorted: about
        # 150 bytes per object, 15 MB for 100,000 objects.
        found: list[tuple[str, int, datetime, str | None]] = []
        kwargs = {"Bucket": self.bucket, "Prefix": self.prefix + prefix}
        try:
            while True:
                page = self.client.list_objects_v2(**kwargs)
                for obj in page.get("Contents", []) or []:
                    key = obj["Key"][len(self.prefix):]
                    if _valid(key) and key.startswith(prefix):
                        found.append((key, obj["Size"], obj["LastModified"], (obj.get("ETag") or "").strip('"') or None))
                if not page.get("IsTruncated"):
                    break
                kwargs["ContinuationToken"] = page["NextContinuationToken"]
        except Exception as exc:
            self._reraise("listing", prefix or "/", exc)
        found.sort(key=lambda entry: entry[0])
        for key, size, modified, etag in found:
            yield ObjectInfo(key=key, size=size, modified=_utc(modified), etag=etag)

    def _is_versioned(self) -> bool:
        if self._versioned is None:
            try:
                status = self.client.get_bucket_versioning(Bucket=self.bucket).get("Status")
            except Exception as exc:
                self._reraise("reading versioning of", self.bucket, exc)
            self._versioned = status in ("Enabled", "Suspended") or bool(self.lock_mode)
        return self._versioned

    def _versions(self, full: str) -> list[str]:
        ids, kwargs = [], {"Bucket": self.bucket, "Prefix": full}
        while True:
            page = self.client.list_object_versions(**kwargs)
            for entry in (page.get("Versions") or []) + (page.get("DeleteMarkers") or []):
                if entry["Key"] == full:
                    ids.append(entry["VersionId"])
            if not page.get("IsTruncated"):
                return ids
            kwargs.update(KeyMarker=page.get("NextKeyMarker", ""), VersionIdMarker=page.get("NextVersionIdMarker", ""))

    def _full(self, key: str) -> str:
        return self.prefix + key

    def _not_found(self, key: str) -> ObjectNotFound:
        return ObjectNotFound(
            f"tier '{self.name}': no object '{key}' in bucket '{self.bucket}'",
            "check the key against `backupctl list`; retention may have removed it",
        )

    def _integrity(self, key: str, what: str) -> StorageError:
        return StorageError(
            f"tier '{self.name}': upload of '{key}' to bucket '{self.bucket}' failed its integrity check: {what}",
            "the bytes changed between this host and the endpoint (a proxy, bad memory or a bad disk); "
            "run the backup again and check the network path",
        )

    def _reraise(self, action: str, key: str, exc: Exception) -> NoReturn:
        """Raise ``exc`` as one of ours, the library's exception kept as the cause (it names no secret)."""
        err = self._error(action, key, exc)
        if err is exc:
            raise exc
        raise err from exc

    def _error(self, action: str, key: str, exc: Exception) -> Exception:
        """Map a botocore/urllib3 failure onto our error tree; messages name no secret."""
        from botocore import exceptions as bx

        where = f"tier '{self.name}': {action} '{key}' in bucket '{self.bucket}' at {self.endpoint}"
        if isinstance(exc, bx.ClientError):
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            text = f"{where} failed: {code or status}: {error.get('Message', '')}".rstrip(": ")
            if code in _NOT_FOUND_CODES or code == "NoSuchUpload" or (status == 404 and code != "NoSuchBucket"):
                return self._not_found(key)
            if code == "NoSuchBucket":
                return StorageError(text, f"create bucket '{self.bucket}' (with Object Lock if the tier uses it) "
                                          f"or fix the bucket name of tier '{self.name}'")
            if action == "deleting" and code == "AccessDenied" and (self.lock_mode or self._versioned):
                return ObjectLocked(f"{where} refused: the object is under Object Lock",
                                    "it can be deleted once its retain-until date has passed; retention waits for it")
            if code in _AUTH_CODES or status == 403:
                return StorageError(text, f"check the credentials referenced by tier '{self.name}' and that they "
                                          f"may use bucket '{self.bucket}'")
            if code in _TRANSIENT_CODES or status >= 500 or status == 429:
                cls = ServiceUnavailable if status == 503 else TransientError
                return cls(text, f"the endpoint of tier '{self.name}' is overloaded or failing; retry later")
            return StorageError(text, f"check the options of tier '{self.name}' (bucket, sse, storage_class, object_lock)")
        if isinstance(exc, (bx.NoCredentialsError, bx.PartialCredentialsError)):
            return StorageError(f"{where} failed: no usable credentials",
                                f"set credentials = \"env:NAME\" or \"file:/path\" on tier '{self.name}'")
        if isinstance(exc, (bx.ConnectionError, bx.HTTPClientError, bx.ResponseStreamingError, ConnectionError, TimeoutError)) or _is_urllib3(exc):
            return ServiceUnavailable(f"{where} failed: cannot reach the endpoint ({type(exc).__name__})",
                                      f"check that {self.endpoint} is up and reachable from this host")
        if isinstance(exc, (StorageError, TransientError, InputError)):
            return exc
        return exc  # a bug or the source's own error: propagate unchanged


class _PartBody(io.RawIOBase):
    """A seekable read-only view of one part's buffer, handed to botocore as the request body.

    botocore copies a bytearray body into a new BytesIO; this hands it the same bytes
    without a second copy of the part.
    """

    def __init__(self, buffer: bytearray) -> None:
        super().__init__()
        self._view = memoryview(buffer).toreadonly()
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def __len__(self) -> int:
        return len(self._view)

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: len(self._view)}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer) -> int:
        chunk = self._view[self._pos:self._pos + len(buffer)]
        n = len(chunk)
        buffer[:n] = chunk
        self._pos += n
        return n

    def close(self) -> None:
        if not self.closed:
            self._view.release()
        super().close()


class _BodyReader(io.RawIOBase):
    """A botocore StreamingBody as a raw stream whose failures are ours (ServiceUnavailable)."""

    def __init__(self, body, tier: S3Storage, key: str) -> None:
        super().__init__()
        self._body, self._tier, self._key = body, tier, key

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        try:
            data = self._body.read(len(buffer))
        except Exception as exc:
            self._tier._reraise("reading", self._key, exc)
        n = len(data)
        buffer[:n] = data
        return n

    def close(self) -> None:
        if not self.closed:
            try:
                self._body.close()
            finally:
                super().close()


def _is_urllib3(exc: Exception) -> bool:
    try:
        from urllib3.exceptions import HTTPError
    except ImportError:  # pragma: no cover
        return False
    return isinstance(exc, HTTPError)


def _is_directory(response: dict) -> bool:
    # Filer-backed servers (SeaweedFS) answer for implicit directories; S3 has none.
    return response.get("ContentType") == "httpd/unix-directory"


def _valid(key: str) -> bool:
    try:
        validate_key(key)
        return True
    except InputError:
        return False


def _utc(value: datetime) -> datetime:
    return value.astimezone(timezone.utc) if value.tzinfo else value.replace(tzinfo=timezone.utc)


# -- configuration ---------------------------------------------------------------------


def s3_credentials(ref: str | None, *, tier: str) -> dict[str, str]:
    """boto3 keyword arguments for a credential reference (empty: boto3's own chain)."""
    if not ref:
        return {}
    kind, _, name = ref.partition(":")
    where = f"tier '{tier}'"
    if kind == "env":
        wanted = {"aws_access_key_id": f"{name}_ACCESS_KEY_ID", "aws_secret_access_key": f"{name}_SECRET_ACCESS_KEY"}
        import os

        missing = [var for var in wanted.values() if not os.environ.get(var)]
        if missing:
            raise ConfigError(f"credential reference '{ref}' does not resolve: {', '.join(missing)} not set",
                              f"export {' and '.join(wanted.values())} in the worker's environment", where=where,
                              field="credentials")
        out = {arg: os.environ[var] for arg, var in wanted.items()}
        if os.environ.get(f"{name}_SESSION_TOKEN"):
            out["aws_session_token"] = os.environ[f"{name}_SESSION_TOKEN"]
        return out
    issue = credentials_mod.problem(ref)
    if issue:
        raise ConfigError(f"credential reference '{ref}' does not resolve: {issue[0]}", issue[1], where=where, field="credentials")
    values: dict[str, str] = {}
    for line in Path(name).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")) or "=" not in line:
            continue
        field, _, value = line.partition("=")
        field = field.strip().lower().removeprefix("aws_")
        if field in ("access_key_id", "secret_access_key", "session_token"):
            values[f"aws_{field}"] = value.strip().strip('"')
    if not values.get("aws_access_key_id") or not values.get("aws_secret_access_key"):
        raise ConfigError(f"credential file {name} lacks access_key_id or secret_access_key",
                          "write two lines: access_key_id = ... and secret_access_key = ...", where=where, field="credentials")
    return values


_SESSION_LOCK = threading.Lock()
_SESSION = None


def _session():
    """One boto3 session per process: it caches the parsed service model (~10 MiB), so every
    tier and every client after the first costs nothing to create."""
    global _SESSION
    if _SESSION is None:
        import boto3

        _SESSION = boto3.session.Session()
    return _SESSION


def open_s3_tier(tier) -> S3Storage:
    """The S3Storage for a configured ``kind = "s3"`` tier (see config.Tier)."""
    opts = dict(tier.options)
    where = f"tiers.{tier.name}"
    sse = opts.get("sse")
    if sse is not None and sse not in SSE_MODES:
        raise ConfigError(f"unknown sse '{sse}'", f"use one of: {', '.join(SSE_MODES)}", where=where, field="sse")
    lock = opts.get("object_lock")
    if lock is True:
        lock = "compliance"
    if lock in (None, False, ""):
        lock_mode = None
    elif isinstance(lock, str) and lock.lower() in LOCK_MODES:
        lock_mode = LOCK_MODES[lock.lower()]
    else:
        raise ConfigError(f"unknown object_lock '{lock}'", 'use "compliance", "governance" or false', where=where, field="object_lock")
    endpoint, region = opts.get("endpoint_url"), opts.get("region")
    path_style = bool(opts.get("path_style", False))
    ref, name = tier.credentials, tier.name

    def make_client(timeout: float | None = None):
        """``timeout``: one attempt with these connect/read timeouts (a health probe), else the backup client."""
        from botocore.config import Config

        config = Config(
            s3={"addressing_style": "path" if path_style else "auto"},
            # one quick retry; RetryingStorage does the backoff
            retries={"total_max_attempts": 1 if timeout else 2, "mode": "standard"},
            connect_timeout=timeout or 5, read_timeout=timeout or 120, max_pool_connections=CONCURRENCY + 4,
            request_checksum_calculation="when_required", response_checksum_validation="when_required",
        )
        with _SESSION_LOCK:  # boto3 sessions are not thread-safe while creating clients
            return _session().client("s3", endpoint_url=endpoint, region_name=region or "us-east-1", config=config,
                                     **s3_credentials(ref, tier=name))

    return S3Storage(
        tier.name, opts["bucket"], make_client, prefix=str(opts.get("prefix") or ""), endpoint=endpoint,
        sse=sse, storage_class=opts.get("storage_class"), lock_mode=lock_mode,
        lock_days=tier.max_age_days if lock_mode else None,
    )
