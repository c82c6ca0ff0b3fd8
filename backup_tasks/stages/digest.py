"""Size and sha256 computed while bytes pass, so no stage re-reads what it just wrote.

A stage hashes its output while writing it (the seal), and the next stage hashes what it
reads while reading it, to compare with that seal: no file is read a second time for
its hash.
"""

from __future__ import annotations

import hashlib
import os
from typing import BinaryIO


class HashingWriter:
    """A write-only file object that counts and hashes everything written through it."""

    def __init__(self, inner: BinaryIO) -> None:
        self._inner = inner
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, data) -> int:
        self._hash.update(data)
        self.size += len(data)
        self._inner.write(data)
        return len(data)

    def flush(self) -> None:
        self._inner.flush()

    def writable(self) -> bool:
        return True

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()


class Drainable:
    """A read-only stream that can be read to its end, whatever its consumer left unread."""

    def read(self, n: int = -1) -> bytes:
        raise NotImplementedError

    def readable(self) -> bool:
        return True

    def drain(self, chunk: int = 1 << 20) -> None:
        """Read to the end, so size and sha256 cover the whole stream even after a consumer gave up."""
        while self.read(chunk):
            pass


class HashingReader(Drainable):
    """A read-only file object that counts and hashes everything read through it."""

    def __init__(self, inner: BinaryIO) -> None:
        self._inner = inner
        self._hash = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data = self._inner.read(n)
        self._hash.update(data)
        self.size += len(data)
        return data

    def readinto(self, buf) -> int:
        n = self._inner.readinto(buf)
        if n:
            self._hash.update(memoryview(buf)[:n])
            self.size += n
        return n

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()


def file_digest(path: str | os.PathLike, chunk: int = 1 << 20) -> tuple[int, str]:
    """(size, sha256) of a file already on disk, read once in chunks (memory stays flat)."""
    with open(path, "rb") as fh:
        reader = HashingReader(fh)
        reader.drain(chunk)
    return reader.size, reader.sha256
