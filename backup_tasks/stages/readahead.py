"""A reader that decodes ahead in one thread and hashes in another, while its consumer reads.

Reading a backup back is three CPU-bound steps on every plaintext byte: decompression,
the plaintext sha256, and the consumer's own work (a tar scan, feeding pg_restore).
Done in the consumer's thread they add up; here zstd and hashlib, which release the GIL
on large buffers, run beside the consumer. Chunks pass through small bounded queues,
so memory stays at a few MiB whatever the size.

The hash covers exactly the bytes the consumer has read, as a HashingReader in its
place would: a chunk is hashed once the consumer has read all of it, and a partly read
one is added to a copy of the hash when asked for.
"""

from __future__ import annotations

import hashlib
import queue
import threading
from typing import BinaryIO

from backup_tasks.stages.chunks import ChunkCursor
from backup_tasks.stages.digest import Drainable

_EOF = object()
_STOP = object()


class ReadaheadHashingReader(ChunkCursor, Drainable):
    """Read ``src`` in ``chunk``-sized pieces in a thread; read()/readinto() hand them out in order.

    Any error of ``src`` (decompression, decryption, storage) is raised by the consumer's
    read() at the point in the stream where it happened, as if it had read ``src``
    itself, and by every read after it. ``close()`` stops and joins both threads; it must be called (plaintext() does).
    """

    def __init__(self, src: BinaryIO, chunk: int = 1 << 20, depth: int = 3) -> None:
        self._src = src
        self._chunk = chunk
        self._ready: queue.Queue = queue.Queue(depth)
        self._to_hash: queue.Queue = queue.Queue(depth)
        self._stop = threading.Event()
        self._hash = hashlib.sha256()
        self._cur: bytes = b""
        self._pos = 0
        self._done = False
        self._error: BaseException | None = None
        self.size = 0
        self._reader = threading.Thread(target=self._read_ahead, name="readahead", daemon=True)
        self._hasher = threading.Thread(target=self._hash_chunks, name="readahead-sha256", daemon=True)
        self._reader.start()
        self._hasher.start()

    # -- the two threads ---------------------------------------------------------------------

    def _read_ahead(self) -> None:
        try:
            while not self._stop.is_set():
                data = self._src.read(self._chunk)
                if not data:
                    break
                if not self._put(self._ready, data):
                    return
            self._put(self._ready, _EOF)
        except BaseException as exc:  # handed to the consumer, raised there
            self._put(self._ready, exc)

    def _put(self, q: queue.Queue, item) -> bool:
        """Block until there is room, unless the consumer stopped reading (then False)."""
        while not self._stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _hash_chunks(self) -> None:
        while True:
            data = self._to_hash.get()
            try:
                if data is _STOP:
                    return
                self._hash.update(data)
            finally:
                self._to_hash.task_done()

    # -- the consumer's side -----------------------------------------------------------------

    def _next(self) -> bool:
        """Move to the next chunk (the finished one goes to the hasher); False at the end."""
        if self._cur:
            self._to_hash.put(self._cur)
            self._cur, self._pos = b"", 0
        if self._error is not None:
            raise self._error  # again: a consumer that caught it must not see a clean end
        if self._done:
            return False
        item = self._ready.get()
        if item is _EOF:
            self._done = True
            return False
        if isinstance(item, BaseException):
            self._error = item
            raise item
        self._cur = item
        return True

    def read(self, n: int = -1) -> bytes:
        if self._pos >= len(self._cur) and not self._next():
            return b""
        if n is None or n < 0:
            parts = [self._cur[self._pos:]]
            self._pos = len(self._cur)
            while self._next():
                parts.append(self._cur)
                self._pos = len(self._cur)
            data = b"".join(parts)
        elif self._pos == 0 and n >= len(self._cur):
            data = self._cur  # the whole chunk: no copy
            self._pos = len(data)
        else:
            data = self._cur[self._pos:self._pos + n]
            self._pos += len(data)
        self.size += len(data)
        return data

    def _handed_out(self, n: int) -> None:  # readinto's bytes count as read
        self.size += n

    @property
    def sha256(self) -> str:
        self._to_hash.join()
        if self._pos:
            partial = self._hash.copy()
            partial.update(memoryview(self._cur)[:self._pos])
            return partial.hexdigest()
        return self._hash.hexdigest()

    def close(self) -> None:
        """Stop reading ahead and join both threads (the hash stays readable)."""
        self._stop.set()
        self._reader.join()
        self._to_hash.put(_STOP)
        self._hasher.join()
