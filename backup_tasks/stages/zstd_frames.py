"""zstd as a sequence of independent frames, so that two threads can decompress at once.

One zstd frame can only be decompressed by one thread, front to back, so a large
backup's read-back can never use more than one core for zstd. Here the plaintext is cut into frames of
``defaults.ZSTD_FRAME_SIZE`` bytes, each compressed on its own, and each preceded by
the 12-byte skippable frame pzstd (zstd's parallel tool) writes for the same reason:
magic 0x184D2A50, length 4, then the compressed size of the frame that follows. A
reader can then hand whole frames to a pool without parsing zstd's blocks.

Both are standard zstd: ``zstd -d`` decompresses concatenated frames and skips
skippable ones, so the disaster path (``age -d | zstd -d``) is unchanged, and
``pzstd -d`` reads the same bytes in parallel. An object without the leading skippable
frame (every object written before this module, or by any other zstd writer) is read
by one streaming decompressor, as before.

Frames are compressed by a pool of ``threads`` single-threaded contexts rather than by
zstd's own multi-threaded mode, which would have to end each frame by waiting for its
last job: on an 827 MB pg_dump the pool used 4.9-5.1 CPU-s against 5.6 and wrote 0.09%
fewer bytes (2 MiB frames, level 3), and a frame's bytes do not depend on the thread
count. Memory is a few frames whatever the size: ``threads + 1`` in flight on each side.
"""

from __future__ import annotations

import struct
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import BinaryIO

import zstandard

from backup_tasks import defaults
from backup_tasks.stages.chunks import ChunkCursor

#: pzstd's skippable frame: magic, the frame's own length (4), the next zstd frame's compressed size
HEADER = struct.Struct("<III")
SKIPPABLE_MAGIC = 0x184D2A50
#: no frame this module writes comes near it; a larger one means a damaged size field, not a real frame
MAX_FRAME = 64 << 20
_EMPTY = memoryview(b"")


def compress_frames(src: BinaryIO, dst: BinaryIO, *, level: int, threads: int, frame_size: int | None = None) -> None:
    """Write ``src`` to ``dst`` as skippable-frame-prefixed zstd frames, in order.

    ``threads`` frames compress at once while the next is read; the plaintext buffers
    are reused, so memory stays at ``threads + 1`` frames in and out.
    """
    size = frame_size or defaults.ZSTD_FRAME_SIZE
    params = zstandard.ZstdCompressionParameters.from_level(level, write_checksum=1)
    local = threading.local()

    def one(chunk: memoryview) -> bytes:
        cctx = getattr(local, "cctx", None)
        if cctx is None:  # a context per thread: they are not thread-safe, and reusing one keeps its tables warm
            cctx = local.cctx = zstandard.ZstdCompressor(compression_params=params)
        return cctx.compress(chunk)  # one-shot: the frame records its content size, and the GIL is released

    def emit(frame: bytes) -> None:
        dst.write(HEADER.pack(SKIPPABLE_MAGIC, 4, len(frame)))
        dst.write(frame)

    pool = ThreadPoolExecutor(threads, thread_name_prefix="zstd-frames") if threads > 1 else None
    pending: deque[tuple[Future, bytearray]] = deque()
    free: list[bytearray] = []
    try:
        first = True
        while True:
            buf = free.pop() if free else bytearray(size)
            n = _fill(src, memoryview(buf))
            if n == 0 and not first:
                break
            first = False  # an empty ``src`` still gives one empty frame: an empty file is not valid zstd
            pending.append((_submit(pool, one, memoryview(buf)[:n]), buf))
            if len(pending) > threads:  # every thread busy and one frame queued: write the oldest
                fut, done = pending.popleft()
                emit(fut.result())
                free.append(done)
            if n < size:
                break
        while pending:
            emit(pending.popleft()[0].result())
    finally:
        for fut, _ in pending:
            fut.cancel()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def _submit(pool: ThreadPoolExecutor | None, fn, arg) -> Future:
    if pool is not None:
        return pool.submit(fn, arg)
    fut: Future = Future()
    fut.set_result(fn(arg))
    return fut


def _fill(src: BinaryIO, view: memoryview) -> int:
    """Fill ``view`` from ``src``, at most CHUNK_SIZE a call as the other stages read; fewer bytes only at the end."""
    have = 0
    readinto = getattr(src, "readinto", None)
    while have < len(view):
        piece = view[have:have + defaults.CHUNK_SIZE]
        if readinto is not None:
            n = readinto(piece)
        else:
            data = src.read(len(piece))
            n = len(data)
            piece[:n] = data
        if not n:
            break
        have += n
    return have


class _Prefixed:
    """``src`` with ``head`` (bytes already read from it) put back in front."""

    def __init__(self, head: bytes, src: BinaryIO) -> None:
        self._head = head
        self._src = src

    def read(self, n: int = -1) -> bytes:
        if self._head:
            if n is None or n < 0:
                data, self._head = self._head + self._src.read(), b""
                return data
            data, self._head = self._head[:n], self._head[n:]
            return data
        return self._src.read(n)


def _read_exact(src: BinaryIO, n: int) -> bytes:
    parts, have = [], 0
    while have < n:
        data = src.read(n - have)
        if not data:
            break
        parts.append(data)
        have += len(data)
    return parts[0] if len(parts) == 1 else b"".join(parts)


class ZstdReader(ChunkCursor):
    """The plaintext behind ``src``: frames decompressed by ``threads`` threads, handed out in order.

    The first read decides: an object that starts with the frame-size header is read
    frame by frame in parallel; any other is streamed by one decompressor. Errors are
    zstandard.ZstdError (or whatever ``src`` raised), raised by the read that reaches
    the damaged frame and by every read after it. The pool stops at the end, at an error,
    or at close(); close() is needed only by a consumer that stops early.
    """

    def __init__(self, src: BinaryIO, threads: int = defaults.ZSTD_READ_THREADS) -> None:
        self._src = src
        self._threads = max(1, threads)
        self._stream = None  # the sequential decompressor, for objects (or a rest) without frame headers
        self._pool: ThreadPoolExecutor | None = None
        self._pending: deque[Future] = deque()
        self._local = threading.local()
        self._lock = threading.Lock()
        self._free: list[bytearray] = []  # plaintext buffers, back once the consumer has moved past one
        self._cfree: list[bytearray] = []  # compressed-frame buffers, back once the frame is decoded
        self._started = False
        self._src_done = False
        self._cur: memoryview | bytes = _EMPTY  # a view of _buf, or bytes of their own
        self._buf: bytearray | None = None  # the pool buffer behind _cur, reused once the consumer moves on
        self._pos = 0
        self._error: BaseException | None = None

    # -- reading frames, in the consumer's thread ----------------------------------------------

    def _start(self) -> None:
        self._started = True
        head = _read_exact(self._src, HEADER.size)
        if self._is_header(head):
            self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="readahead-zstd")
            self._refill(head)
        else:
            self._sequential(head)

    @staticmethod
    def _is_header(head: bytes) -> bool:
        return len(head) == HEADER.size and HEADER.unpack(head)[:2] == (SKIPPABLE_MAGIC, 4)

    def _sequential(self, head: bytes) -> None:
        self._src_done = True
        self._stream = zstandard.ZstdDecompressor().stream_reader(
            _Prefixed(head, self._src), read_size=defaults.CHUNK_SIZE, read_across_frames=True, closefd=False)

    def _submit(self, head: bytes) -> None:
        size = HEADER.unpack(head)[2]
        if size > MAX_FRAME:
            raise zstandard.ZstdError(f"a frame header gives {size} compressed bytes, more than any frame written")
        cbuf = self._buffer(self._cfree, size, spare=size // 4)  # compressed sizes vary a little
        got = _fill(self._src, memoryview(cbuf)[:size])
        if got != size:
            with self._lock:
                self._cfree.append(cbuf)
            raise zstandard.ZstdError(f"truncated: a frame of {size} bytes ends after {got}")
        self._pending.append(self._pool.submit(self._decode, cbuf, size))

    def _refill(self, head: bytes | None = None) -> None:
        """Keep ``threads`` frames decompressing while the consumer reads the current one.

        An error while reading ``src`` takes the place of the frame it spoiled, so the
        consumer meets it after the good frames before it, where a stream would have.
        """
        try:
            while not self._src_done and len(self._pending) < self._threads:
                if head is None:
                    head = _read_exact(self._src, HEADER.size)
                if not head:
                    self._src_done = True
                elif self._is_header(head):
                    self._submit(head)
                else:
                    # Standard zstd without our headers follows (frames appended by another
                    # writer): the rest is streamed once the frames before it are handed out.
                    self._sequential(head)
                head = None
        except BaseException as exc:
            failed: Future = Future()
            failed.set_exception(exc)
            self._pending.append(failed)
            self._src_done = True

    def _decode(self, cbuf: bytearray, csize: int) -> tuple[memoryview | bytes, bytearray | None]:
        """One frame's plaintext, in a reused buffer when the frame records its size (ours all do)."""
        try:
            frame = memoryview(cbuf)[:csize]
            dctx = getattr(self._local, "dctx", None)
            if dctx is None:
                dctx = self._local.dctx = zstandard.ZstdDecompressor()
            size = zstandard.frame_content_size(frame)
            if size > MAX_FRAME:
                raise zstandard.ZstdError(f"a frame declares {size} bytes of content, more than any frame written")
            if size < 0:  # no size to pick a buffer by
                return dctx.decompress(frame, max_output_size=MAX_FRAME), None
            buf = self._buffer(self._free, size, spare=defaults.ZSTD_FRAME_SIZE - size)
            view = memoryview(buf)[:size]
            reader = dctx.stream_reader(frame)
            got = 0
            while got < size and (n := reader.readinto(view[got:])):
                got += n
            if got != size or reader.read(1):
                raise zstandard.ZstdError(f"a frame that declares {size} bytes of content decoded to {got if got != size else 'more'}")
            return view, buf
        finally:
            with self._lock:
                self._cfree.append(cbuf)

    def _buffer(self, free: list[bytearray], size: int, *, spare: int) -> bytearray:
        """A buffer of at least ``size`` bytes from ``free``. Buffers are reused because fresh
        frame-sized allocations, made in one thread and freed in another, cost page faults
        (0.1-0.2 CPU-s of system time on an 827 MB verify, measured) and left more resident."""
        with self._lock:
            buf = free.pop() if free else None
        if buf is None or len(buf) < size:
            buf = bytearray(size + max(0, spare))
        return buf

    def _next(self) -> bool:
        """Move to the next decoded frame (or piece of the sequential rest); False at the end."""
        if self._error is not None:
            raise self._error
        if self._buf is not None:  # the consumer has copied all of it out
            with self._lock:
                self._free.append(self._buf)
            self._buf = None
        self._cur, self._pos = _EMPTY, 0
        try:
            if not self._started:
                self._start()
            if self._pending:
                fut = self._pending.popleft()
                self._refill()  # before waiting: the freed thread starts on the next frame now
                self._cur, self._buf = fut.result()
                return True
            if self._stream is not None:
                data = self._stream.read(defaults.CHUNK_SIZE)
                if data:
                    self._cur = data
                    return True
            self.close()
            return False
        except BaseException as exc:
            self._error = exc
            self.close()
            raise

    def read(self, n: int = -1) -> bytes:
        """A copy of a pool buffer (reused once the consumer has moved past it), else bytes as decoded."""
        if n is None or n < 0:
            parts = [bytes(self._cur[self._pos:])]
            while self._next():
                parts.append(bytes(self._cur))
            self._pos = len(self._cur)
            return b"".join(parts)
        if self._pos >= len(self._cur) and not self._next():
            return b""
        if self._buf is None and self._pos == 0 and n >= len(self._cur):
            self._pos = len(self._cur)
            return self._cur  # bytes of its own, whole, as a CHUNK_SIZE reader of the stream gets them: no copy
        data = bytes(self._cur[self._pos:self._pos + n])
        self._pos += len(data)
        return data

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        """Stop the pool (a frame being decoded finishes first); ``src`` is the caller's to close."""
        for fut in self._pending:
            fut.cancel()
        self._pending.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._free.clear()
        self._cfree.clear()
