"""How far a running stage is: bytes done of bytes total, for Flower, the client and the CLI bar.

Stage functions (ops/backup.py, ops/verify.py, ops/restore.py) know bytes but not Celery: they take
a ``progress`` callback, ``progress(stage, bytes_done, bytes_total)``, and wrap the stream
they already read or write in a CountingReader / CountingWriter that calls it. What sits
behind the callback differs by caller:

- a Celery stage task (task_progress.py) publishes a PROGRESS state, throttled;
- the embedded default additionally tells in-process listeners (``listening``), which is
  how ``backupctl backup`` draws its bar when the chain runs in its own process;
- ``backupctl restore`` passes a callback that moves its bar directly.

A progress report is a dict with exactly the keys in ``KEYS``; ``bytes_total`` is None
when the size is not known in advance (a dump).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Any, BinaryIO, Callable, Iterator

from backup_tasks import defaults

log = logging.getLogger(__name__)

#: the PROGRESS meta contract (Flower, client.Run.progress, the CLI bar)
KEYS = ("backup_id", "target", "stage", "bytes_done", "bytes_total")

#: what stage functions call: progress(stage, bytes_done, bytes_total)
Callback = Callable[[str, int, "int | None"], None]


def ignore(stage: str, bytes_done: int, bytes_total: int | None) -> None:
    """The callback when nobody is watching."""


class Throttled:
    """Turn per-chunk byte counts into reports at most once per ``interval`` seconds.

    The first report of each stage always goes out, so every stage is seen however
    fast it is; a stage of a small backup costs one report.
    """

    def __init__(self, sink: Callable[[dict], None], *, backup_id: str, target: str,
                 interval: float = defaults.PROGRESS_INTERVAL_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        self._sink = sink
        self._base = {"backup_id": backup_id, "target": target}
        self._interval = interval
        self._clock = clock
        self._stage: str | None = None
        self._last = float("-inf")
        self.last: dict | None = None

    def __call__(self, stage: str, bytes_done: int, bytes_total: int | None = None) -> None:
        now = self._clock()
        if stage == self._stage and now - self._last < self._interval:
            return
        self._stage, self._last = stage, now
        self.last = {**self._base, "stage": stage, "bytes_done": bytes_done, "bytes_total": bytes_total}
        try:
            self._sink(dict(self.last))
        except Exception:  # noqa: BLE001 - progress is a courtesy; it never fails the stage
            log.warning("progress report for %s failed", self._base["backup_id"], exc_info=True)


class _Counting:
    """Delegates everything to the wrapped file object and counts the bytes that pass."""

    def __init__(self, inner: BinaryIO, on_count: Callable[[int], None]) -> None:
        self._inner = inner
        self._on_count = on_count
        self.count = 0

    def _add(self, n: int | None) -> None:
        if n:
            self.count += n
            self._on_count(self.count)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class CountingReader(_Counting):
    def __init__(self, inner: BinaryIO, on_count: Callable[[int], None]) -> None:
        super().__init__(inner, on_count)
        self._origin = inner.tell() if _seekable(inner) else 0

    def seek(self, offset: int, whence: int = 0) -> int:
        """A retried upload rewinds its source: count from where the reader now is."""
        position = self._inner.seek(offset, whence)
        self.count = max(0, position - self._origin)
        return position

    def read(self, n: int = -1) -> bytes:
        data = self._inner.read(n)
        self._add(len(data))
        return data

    def readinto(self, buf) -> int:
        n = self._inner.readinto(buf)
        self._add(n)
        return n

    def readable(self) -> bool:
        return True


class CountingWriter(_Counting):
    def write(self, data) -> int:
        n = self._inner.write(data)
        self._add(len(data))
        return n

    def writable(self) -> bool:
        return True


def _seekable(stream) -> bool:
    try:
        return bool(stream.seekable())
    except (AttributeError, OSError, ValueError):
        return False


def reading(stream: BinaryIO, progress: Callback | None, stage: str, total: int | None, *, offset: int = 0) -> BinaryIO:
    """``stream`` itself without a callback, else a reader that reports ``offset + bytes read``."""
    if progress is None:
        return stream
    progress(stage, offset, total)
    return CountingReader(stream, lambda n: progress(stage, offset + n, total))


def writing(stream: BinaryIO, progress: Callback | None, stage: str, total: int | None = None) -> BinaryIO:
    if progress is None:
        return stream
    progress(stage, 0, total)
    return CountingWriter(stream, lambda n: progress(stage, n, total))


# -- in-process listeners (the embedded default runs the chain inside backupctl) -----------------

_listeners: list[Callable[[dict], None]] = []
_listeners_lock = threading.Lock()


@contextlib.contextmanager
def listening(callback: Callable[[dict], None]) -> Iterator[None]:
    """Receive every progress report of stages running in this process while the block runs."""
    with _listeners_lock:
        _listeners.append(callback)
    try:
        yield
    finally:
        with _listeners_lock:
            _listeners.remove(callback)


def notify_local(report: dict) -> None:
    with _listeners_lock:
        listeners = list(_listeners)
    for callback in listeners:
        try:
            callback(dict(report))
        except Exception:  # noqa: BLE001 - a broken display never breaks a backup
            log.warning("progress listener failed", exc_info=True)
