"""A bandwidth limit for uploads, as a wrapper with the Storage interface.

``bandwidth_limit`` on a tier (bytes per second; ``"20MiB"`` style strings too) wraps
it in ThrottledStorage: a put reads its source through a token bucket, so the tier's
own reader (and its parallel part uploads) can never send faster than the limit on
average, while reads, listings and deletes pass untouched. The bucket holds one
second's worth of tokens, so short bursts are allowed but the long-run rate is the limit.
The wrapper has the capabilities of the tier it wraps, passed on unchanged
(``storage.forward``), except ``LinkIn``: a hard link stores a file without its bytes
passing through the bucket, so a limited tier is always written by copying.
"""

from __future__ import annotations

import io
import re
import threading
import time
from typing import BinaryIO, Callable, Iterator

from backup_tasks.errors import ConfigError
from backup_tasks.storage.base import ObjectInfo, Storage
from backup_tasks.storage.capabilities import LinkIn
from backup_tasks.storage.forward import FORWARDERS, Wrapper

_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 1000**2, "mb": 1000**2, "mib": 1024**2,
          "g": 1000**3, "gb": 1000**3, "gib": 1024**3}


def parse_rate(value: object, *, where: str = "") -> int:
    """Bytes per second from an int or a string such as ``"8MiB"`` or ``"500 kB"`` (per second)."""
    if isinstance(value, bool):
        value = None
    if isinstance(value, int) and value > 0:
        return value
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*(?:/s)?\s*", value)
        if m and m.group(2).lower() in _UNITS and float(m.group(1)) > 0:
            return int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    raise ConfigError(f"invalid bandwidth_limit {value!r}", 'use bytes per second, e.g. 10485760 or "10MiB"',
                      where=where, field="bandwidth_limit")


class TokenBucket:
    """``rate`` bytes per second on average, bursts up to ``burst`` bytes; thread-safe."""

    def __init__(self, rate: int, burst: int | None = None, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], object] = time.sleep) -> None:
        self.rate = rate
        self.burst = burst or rate
        self._tokens = float(self.burst)
        self._clock, self._sleep = clock, sleep
        self._last = clock()
        self._lock = threading.Lock()

    def take(self, n: int) -> None:
        """Block until ``n`` bytes may pass (a large n goes into debt, paid by waiting)."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
            self._last = now
            self._tokens -= n
            wait = -self._tokens / self.rate if self._tokens < 0 else 0.0
        if wait > 0:
            self._sleep(wait)


class _ThrottledReader(io.RawIOBase):
    def __init__(self, source: BinaryIO, bucket: TokenBucket) -> None:
        super().__init__()
        self._source, self._bucket = source, bucket

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data = self._source.read(size)
        if data:
            self._bucket.take(len(data))
        return data

    def readinto(self, buffer) -> int:  # pragma: no cover - tiers call read()
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    # A retried put rewinds its source; pass seeking through so RetryingStorage still works.
    def seekable(self) -> bool:
        return self._source.seekable()

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._source.seek(offset, whence)

    def tell(self) -> int:
        return self._source.tell()


class ThrottledStorage(Wrapper):
    """``inner`` with puts limited to ``rate`` bytes per second (shared by all puts of this tier)."""

    #: withheld: a link would bypass the limit (and a limit is set to spare the disk or link, whatever the filesystem)
    forwarders = {**FORWARDERS, LinkIn: None}

    def __init__(self, inner: Storage, rate: int, **bucket_kw) -> None:
        self.inner = inner
        self.rate = rate
        self.bucket = TokenBucket(rate, **bucket_kw)

    @property
    def name(self) -> str:
        return self.inner.name

    def __repr__(self) -> str:
        return f"ThrottledStorage({self.inner!r}, rate={self.rate})"

    def put(self, key: str, source: BinaryIO, *, size_hint: int | None = None) -> ObjectInfo:
        return self.inner.put(key, _ThrottledReader(source, self.bucket), size_hint=size_hint)

    def get(self, key: str):
        return self.inner.get(key)

    def stat(self, key: str) -> ObjectInfo:
        return self.inner.stat(key)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        return self.inner.list(prefix)

    def delete(self, key: str) -> None:
        self.inner.delete(key)
