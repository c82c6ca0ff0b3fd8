"""S3Storage: the five operations of a tier on one bucket, under one prefix.

Reads, listings and deletes are here; the put is in ``multipart`` and what a library
failure means in ``failures``. A versioned bucket (every Object Lock bucket is one) has
every version of a key removed by ``delete``, not merely a delete marker added, so
deleted really means gone.
"""

from __future__ import annotations

import hashlib
import io
import threading
from datetime import datetime, timezone
from typing import Any, BinaryIO, Callable, Iterator, NoReturn

from backup_tasks.defaults import CHUNK_SIZE
from backup_tasks.errors import InputError, ObjectNotFound
from backup_tasks.storage.base import ObjectInfo, validate_key, validate_prefix
from backup_tasks.storage.s3.failures import error_for
from backup_tasks.storage.s3.multipart import CONCURRENCY, MIN_PART_SIZE, PART_SIZE, MultipartUploads


class S3Storage(MultipartUploads):
    """A tier in ``bucket`` under ``prefix``. Construction does no I/O.

    ``client_factory(timeout=None)`` returns a boto3 S3 client; it is called once, on
    first use, so a host that never touches this tier never resolves its credentials.
    Its capabilities are Probe and StaleUploads; LockedS3Storage adds ObjectLock.
    """

    #: the Object Lock mode new objects are written with (LockedS3Storage sets it)
    lock_mode: str | None = None

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
        check_etag: bool | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
    ) -> None:
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"part_size must be at least {MIN_PART_SIZE} bytes (S3's minimum)")
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.name = name
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.endpoint = endpoint or "AWS"
        self.part_size = part_size
        self.concurrency = concurrency
        self.sse = sse
        self.storage_class = storage_class
        # SSE-KMS (and SSE-C) ETags are not the MD5 of the bytes; Content-MD5 still protects the transfer.
        self.check_etag = (sse != "aws:kms") if check_etag is None else check_etag
        self._clock = clock
        self._client_factory = client_factory
        self._client = None
        self._client_lock = threading.Lock()
        #: whether the bucket keeps versions, once a delete or a lock query has asked
        self.versioned: bool | None = None
        self._orphans: set[tuple[str, str]] = set()  # (full key, upload id) whose abort failed

    def __repr__(self) -> str:
        return f"S3Storage(name={self.name!r}, bucket={self.bucket!r}, prefix={self.prefix!r}, endpoint={self.endpoint!r})"

    def probe(self, timeout: float) -> str:
        """HEAD the bucket once with a short-lived client bounded by ``timeout`` (GET /health):
        a black-holed endpoint must not leave a thread waiting for the backup client's 120 s."""
        self._client_factory(timeout).head_bucket(Bucket=self.bucket)
        return f"bucket '{self.bucket}' answers"

    @property
    def client(self):
        with self._client_lock:
            if self._client is None:
                self._client = self._client_factory()
            return self._client

    # -- the Storage interface -------------------------------------------------------

    def put(self, key: str, source: BinaryIO, *, size_hint: int | None = None) -> ObjectInfo:
        """Stream ``source`` up as one PUT or a multipart upload (module ``multipart``)."""
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
            raise self.not_found(key)
        return io.BufferedReader(_BodyReader(response["Body"], self, key), CHUNK_SIZE)

    def stat(self, key: str) -> ObjectInfo:
        full = self._full(validate_key(key))
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=full)
        except Exception as exc:
            self._reraise("reading", key, exc)
        if _is_directory(head):
            raise self.not_found(key)
        return ObjectInfo(key=key, size=head["ContentLength"], modified=utc(head["LastModified"]),
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

    # -- capability: StaleUploads (multipart debris) ---------------------------------

    def incomplete_uploads(self, prefix: str = "") -> list[dict]:
        """Multipart uploads of keys under ``prefix`` (in this tier's prefix) that were started and never finished."""
        out, kwargs = [], {"Bucket": self.bucket, "Prefix": self.prefix + prefix}
        try:
            while True:
                page = self.client.list_multipart_uploads(**kwargs)
                for up in page.get("Uploads", []) or []:
                    out.append({"key": up["Key"][len(self.prefix):], "upload_id": up["UploadId"],
                                "initiated": utc(up["Initiated"])})
                if not page.get("IsTruncated"):
                    return out
                kwargs.update(KeyMarker=page.get("NextKeyMarker", ""), UploadIdMarker=page.get("NextUploadIdMarker", ""))
        except Exception as exc:
            self._reraise("listing uploads", self.prefix or "/", exc)

    def abort_stale_uploads(self, older_than: datetime, *, prefix: str = "", dry_run: bool = False) -> list[str]:
        """Abort multipart uploads under ``prefix`` started before ``older_than`` (and any this process failed to abort)."""
        aborted = []
        if not dry_run:
            aborted += [key for key in (full[len(self.prefix):] for full, _ in self._abort_orphans()) if key.startswith(prefix)]
        for up in self.incomplete_uploads(prefix):
            if up["initiated"] < older_than:
                if not dry_run:
                    self._abort(self._full(up["key"]), up["upload_id"])
                aborted.append(up["key"])
        return aborted

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
            yield ObjectInfo(key=key, size=size, modified=utc(modified), etag=etag)

    def _is_versioned(self) -> bool:
        if self.versioned is None:
            try:
                status = self.client.get_bucket_versioning(Bucket=self.bucket).get("Status")
            except Exception as exc:
                self._reraise("reading versioning of", self.bucket, exc)
            self.versioned = status in ("Enabled", "Suspended") or bool(self.lock_mode)
        return self.versioned

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

    def not_found(self, key: str) -> ObjectNotFound:
        """The error for a key this bucket does not hold."""
        return ObjectNotFound(
            f"tier '{self.name}': no object '{key}' in bucket '{self.bucket}'",
            "check the key against `backupctl list`; retention may have removed it",
        )

    def _reraise(self, action: str, key: str, exc: Exception) -> NoReturn:
        """Raise ``exc`` as one of ours, the library's exception kept as the cause (it names no secret)."""
        err = self._error(action, key, exc)
        if err is exc:
            raise exc
        raise err from exc

    def _error(self, action: str, key: str, exc: Exception) -> Exception:
        """Map a botocore/urllib3 failure onto our error tree; messages name no secret."""
        return error_for(self, action, key, exc)


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


def _is_directory(response: dict) -> bool:
    # Filer-backed servers (SeaweedFS) answer for implicit directories; S3 has none.
    return response.get("ContentType") == "httpd/unix-directory"


def _valid(key: str) -> bool:
    try:
        validate_key(key)
        return True
    except InputError:
        return False


def utc(value: datetime) -> datetime:
    """``value`` in UTC; a naive one (some servers send them) is taken to be UTC."""
    return value.astimezone(timezone.utc) if value.tzinfo else value.replace(tzinfo=timezone.utc)


