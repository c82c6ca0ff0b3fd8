"""The put of the s3 tier: one PUT for a small object, a multipart upload for a large one.

An object smaller than one part goes up in a single PUT; a larger one as a multipart
upload, which S3 shows to nobody until it is completed. Any failure (the source broke,
a part failed, an integrity check failed) aborts the multipart upload, so no orphaned
parts are left to be billed; if even the abort cannot reach the endpoint, the upload id
is remembered and aborted at the next put (or by ``abort_stale_uploads``).

The source is read in ``CHUNK_SIZE`` pieces into parts of ``part_size`` bytes; at most
``concurrency`` parts are in flight while the next one is read, so peak memory is about
``concurrency * part_size`` whatever the object size. Every part (or single PUT) carries
its MD5 in ``Content-MD5`` and the returned ETag is compared with it (except under
SSE-KMS, whose ETags are not MD5s).
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import mmap
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, BinaryIO, Callable, NoReturn

from backup_tasks.defaults import CHUNK_SIZE
from backup_tasks.errors import InputError, ObjectNotFound, StorageError
from backup_tasks.storage.base import require_bytes

log = logging.getLogger(__name__)

MiB = 1024 * 1024

#: 8 MiB parts, like boto3's default TransferConfig: few requests, and S3 allows
#: 10,000 parts, i.e. objects up to 80 GB; larger size hints raise the part size.
PART_SIZE = 8 * MiB
MIN_PART_SIZE = 5 * MiB  # S3's own minimum for every part but the last
MAX_PARTS = 10_000

#: parts uploaded at once; with the part being read this bounds memory (module docstring)
CONCURRENCY = 4


class MultipartUploads:
    """The put half of S3Storage, and the uploads it started but could not finish or abort.

    A mixin of S3Storage only; it works on the tier's attributes declared here.
    """

    name: str
    bucket: str
    prefix: str
    client: Any
    part_size: int
    concurrency: int
    check_etag: bool
    sse: str | None
    storage_class: str | None
    _orphans: set[tuple[str, str]]  # (full key, upload id) whose abort failed

    _reraise: Callable[[str, str, Exception], NoReturn]
    _error: Callable[[str, str, Exception], Exception]

    def _part_size_for(self, size_hint: int | None) -> int:
        if size_hint and size_hint > self.part_size * MAX_PARTS:
            return -(-size_hint // (MAX_PARTS - 100) // MiB) * MiB  # round up to whole MiB, keep headroom
        return self.part_size

    def _read_part(self, source: BinaryIO, key: str, digest, part_size: int) -> tuple[memoryview, bool]:
        """Up to ``part_size`` bytes and whether the source ended.

        The bytes go into one buffer of the part's size (``_part_buffer``), filled in place
        by the source's ``readinto`` when it has one: no chunk is allocated and freed per
        read, and a part costs its own size, not twice that.
        """
        part, have = _part_buffer(part_size), 0
        fill = _Filler(source, self.name, key)
        while have < part_size:
            n = fill(part[have:have + min(CHUNK_SIZE, part_size - have)])  # errors of the source propagate unchanged
            if not n:
                break
            digest.update(part[have:have + n])
            have += n
        return part[:have], have < part_size

    def _object_args(self) -> dict:
        """Arguments every new object is written with (a locking tier adds its lock)."""
        args: dict[str, Any] = {}
        if self.sse:
            args["ServerSideEncryption"] = self.sse
        if self.storage_class:
            args["StorageClass"] = self.storage_class
        return args

    def _put_single(self, key: str, full: str, data: memoryview) -> str:
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

    def _upload_part(self, key: str, full: str, upload_id: str, number: int, data: memoryview) -> dict:
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

    def _integrity(self, key: str, what: str) -> StorageError:
        return StorageError(
            f"tier '{self.name}': upload of '{key}' to bucket '{self.bucket}' failed its integrity check: {what}",
            "the bytes changed between this host and the endpoint (a proxy, bad memory or a bad disk); "
            "run the backup again and check the network path",
        )


def _part_buffer(size: int) -> memoryview:
    """A part's buffer: an anonymous mapping of its own, unmapped when the last view of it goes.

    Not a bytearray: glibc serves a large malloc with a mapping, but the first time it
    frees one it raises its mapping threshold to that size, and from then on every
    smaller buffer (the 1 MiB chunks of the download, of botocore's signing) comes from
    heaps that keep freed memory; with a heap per thread that held 30-40 MiB above what
    was live. A mapping made here never moves that threshold.
    """
    return memoryview(mmap.mmap(-1, size))


class _Filler:
    """``fill(view)`` puts the source's next bytes into ``view`` and returns their count (0 at its end).

    By ``readinto`` when the source has one; a raw stream that implements only ``read``
    (NotImplementedError), or any other source, by ``read`` and a copy.
    """

    def __init__(self, source: BinaryIO, tier: str, key: str) -> None:
        self._source, self._tier, self._key = source, tier, key
        self._readinto = getattr(source, "readinto", None)

    def __call__(self, view: memoryview) -> int:
        if self._readinto is not None:
            try:
                return self._readinto(view) or 0
            except (NotImplementedError, io.UnsupportedOperation):
                self._readinto = None
        chunk = self._source.read(len(view))
        if not chunk:
            return 0
        require_bytes(chunk, tier=self._tier, key=self._key)
        n = len(chunk)
        if n > len(view):  # a source that returns more than asked for
            raise InputError(f"tier '{self._tier}': source for '{self._key}' returned more bytes than requested",
                             "pass a regular binary stream")
        view[:n] = chunk
        return n


class _PartBody(io.RawIOBase):
    """A seekable read-only view of one part's buffer, handed to botocore as the request body.

    botocore copies a bytearray body into a new BytesIO; this hands it the same bytes
    without a second copy of the part.
    """

    def __init__(self, buffer: memoryview) -> None:
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

    def read(self, size: int = -1) -> memoryview:
        """The next ``size`` bytes as a view of the part, not a copy.

        botocore hashes the body in 1 MiB reads to sign it (over plain HTTP) and the
        connection sends it in 16 KiB ones; a copy per read would allocate and free that
        much per read in each upload thread, which the allocator's per-thread heaps keep.
        """
        end = len(self._view) if size is None or size < 0 else self._pos + size
        chunk = self._view[self._pos:end]
        self._pos += len(chunk)
        return chunk

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

