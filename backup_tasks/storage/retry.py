"""Retry as a wrapper with the Storage interface, so no tier carries its own loop.

Only failures that may go away are retried: TransientError (tiers raise it for
throttling, 5xx answers, dropped connections) and the standard library's
ConnectionError and TimeoutError, which networking libraries raise directly; those are
wrapped as ServiceUnavailable so callers see one error tree. Everything else (a
missing object, a full disk, a bad key) is permanent and raised at once.

Backoff is exponential with full jitter (delay drawn from [0, min(max, base * 2**n)]):
when many workers lose the same endpoint at once, jitter spreads their retries out
instead of making them knock together.

The wrapper has the capabilities of the tier it wraps (``storage.forward``). Reading an
Object Lock and aborting stale uploads are retried like the five operations (both are
safe to repeat); a probe is passed on once, because health reports what is true now.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from datetime import datetime
from typing import Any, BinaryIO, Callable, Iterator, TypeVar

from backup_tasks.errors import ServiceUnavailable, TransientError
from backup_tasks.storage.base import ObjectInfo, Storage, validate_prefix
from backup_tasks.storage.capabilities import ObjectLock, StaleUploads
from backup_tasks.storage.forward import FORWARDERS, Wrapper

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Raised by networking libraries without going through our error tree.
_LIBRARY_TRANSIENT = (ConnectionError, TimeoutError)


class _RetriedObjectLock:
    inner: Any
    _call: Callable[..., Any]

    def locked_until(self, key: str) -> datetime | None:
        return self._call("locked_until", key, lambda: self.inner.locked_until(key))


class _RetriedStaleUploads:
    inner: Any
    _call: Callable[..., Any]

    def abort_stale_uploads(self, older_than: datetime, *, prefix: str = "", dry_run: bool = False) -> list[str]:
        # A repeat is safe: an upload the failed attempt already aborted is no longer there
        # (nor among the keys returned).
        return self._call("abort_stale_uploads", prefix or "/",
                          lambda: self.inner.abort_stale_uploads(older_than, prefix=prefix, dry_run=dry_run))


class RetryingStorage(Wrapper):
    """``inner`` with transient failures retried up to ``attempts`` calls in total.

    ``sleep`` and ``rng`` are injectable so tests check the backoff without waiting.
    """

    forwarders = {**FORWARDERS, ObjectLock: _RetriedObjectLock, StaleUploads: _RetriedStaleUploads}

    def __init__(
        self,
        inner: Storage,
        attempts: int = 4,
        base_delay: float = 0.5,
        max_delay: float = 30,
        sleep: Callable[[float], object] = time.sleep,
        *,
        rng: random.Random | None = None,
    ) -> None:
        if attempts < 1:
            raise ValueError(f"attempts must be at least 1, got {attempts}")
        if base_delay < 0 or max_delay < 0:
            raise ValueError("delays must not be negative")
        self.inner = inner
        self.attempts = attempts
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.sleep = sleep
        self.rng = rng or random.Random()

    @property
    def name(self) -> str:
        return self.inner.name

    def __repr__(self) -> str:
        return f"RetryingStorage({self.inner!r}, attempts={self.attempts})"

    # -- the Storage interface -------------------------------------------------------

    def put(self, key: str, source: BinaryIO, *, size_hint: int | None = None) -> ObjectInfo:
        """Retry only if ``source`` can be rewound: a second try must send the same bytes.

        A non-seekable source (a pipe from pg_dump) gets one attempt; the caller has to
        re-run the stage that produced it.
        """
        start = _start_position(source)
        if start is None:
            return self._call("put", key, lambda: self.inner.put(key, source, size_hint=size_hint), attempts=1)

        def rewind() -> None:
            source.seek(start)

        return self._call(
            "put", key, lambda: self.inner.put(key, source, size_hint=size_hint), before_retry=rewind
        )

    @contextlib.contextmanager
    def get(self, key: str) -> Iterator[BinaryIO]:
        """Retry opening the object; a failure while reading the stream is not retried.

        Opening happens on entering the context, because some tiers open lazily there.
        """

        def open_once() -> tuple[contextlib.ExitStack, BinaryIO]:
            stack = contextlib.ExitStack()
            try:
                stream = stack.enter_context(self.inner.get(key))
            except BaseException:
                stack.close()
                raise
            return stack, stream

        stack, stream = self._call("get", key, open_once)
        with stack:
            yield stream

    def stat(self, key: str) -> ObjectInfo:
        return self._call("stat", key, lambda: self.inner.stat(key))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Resume after the last key yielded when a listing breaks off.

        Listings are sorted, so restarting and skipping keys up to the last one seen
        yields each key once. ``attempts`` counts failures in a row without progress.
        """
        validate_prefix(prefix)  # fail where the bad prefix is passed, not on next()
        return self._list(prefix)

    def delete(self, key: str) -> None:
        self._call("delete", key, lambda: self.inner.delete(key))

    # -- the loop --------------------------------------------------------------------

    def _list(self, prefix: str) -> Iterator[ObjectInfo]:
        last: str | None = None
        failures = 0
        it: Iterator[ObjectInfo] | None = None
        while True:
            try:
                if it is None:
                    it = iter(self.inner.list(prefix))
                info = next(it)
            except StopIteration:
                return
            except Exception as exc:
                failures += 1
                self._handle_failure("list", prefix or "/", exc, failures, self.attempts)
                it = None
                continue
            if last is not None and info.key <= last:
                continue  # already yielded before the listing broke off
            failures = 0
            last = info.key
            yield info

    def _call(
        self,
        op: str,
        key: str,
        fn: Callable[[], T],
        *,
        attempts: int | None = None,
        before_retry: Callable[[], None] | None = None,
    ) -> T:
        limit = self.attempts if attempts is None else attempts
        attempt = 1
        while True:
            try:
                return fn()
            except Exception as exc:
                self._handle_failure(op, key, exc, attempt, limit)
            attempt += 1
            if before_retry is not None:
                before_retry()

    def _handle_failure(self, op: str, key: str, exc: Exception, attempt: int, limit: int) -> None:
        """Sleep before the next attempt, or raise: at once if permanent, else when out of tries."""
        if isinstance(exc, TransientError):
            error: TransientError = exc
        elif isinstance(exc, _LIBRARY_TRANSIENT):
            error = ServiceUnavailable(
                f"tier '{self.name}': {op} '{key}' failed: {type(exc).__name__}: {exc}",
                f"check that the storage of tier '{self.name}' is reachable from this host; "
                f"tried {attempt} time(s)",
            )
        else:
            raise exc  # permanent: retrying cannot help
        if attempt >= limit:
            if error is exc:
                raise exc
            raise error from exc
        delay = self._delay(attempt)
        log.warning(
            "tier %r: %s %r failed (%s); attempt %d of %d, retrying in %.2fs",
            self.name, op, key, exc, attempt, limit, delay,
        )
        self.sleep(delay)

    def _delay(self, attempt: int) -> float:
        """Full jitter: uniform in [0, min(max_delay, base_delay * 2**(attempt-1))]."""
        cap = min(self.max_delay, self.base_delay * (2 ** (attempt - 1)))
        return self.rng.uniform(0, cap)


def _start_position(source: BinaryIO) -> int | None:
    """Where to rewind to before a retry, or None if ``source`` cannot be rewound."""
    try:
        return source.tell() if source.seekable() else None
    except (AttributeError, OSError, ValueError):
        return None
