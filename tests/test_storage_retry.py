"""RetryingStorage over a real local tier, with a failing layer standing in for a network.

FlakyStorage is a real Storage that fails the first N calls of each (operation, key)
the way a dropped connection does, then delegates. Sleeps are recorded, not slept.
"""

from __future__ import annotations

import hashlib
import io
import random
from collections import Counter

import pytest

pytest.register_assert_rewrite("storage_conformance")

from storage_conformance import GeneratedReader, StorageConformance, keys, pattern_chunks, read_all  # noqa: E402

from backup_tasks.errors import (  # noqa: E402
    ObjectNotFound,
    ServiceUnavailable,
    StorageError,
    TransientError,
)
from backup_tasks.storage import LocalStorage, RetryingStorage  # noqa: E402

ALL_OPS = frozenset({"put", "get", "stat", "list", "delete"})


def connection_reset() -> Exception:
    return TransientError("connection reset by peer", "retry later")


class FlakyStorage:
    """Fails the first ``failures`` calls of every (operation, key), then delegates.

    ``put`` fails after consuming part of the source (a drop mid-upload); the n-th
    listing fails after yielding n objects (a drop mid-listing).
    """

    def __init__(self, inner, failures=1, error=connection_reset, ops=ALL_OPS):
        self.inner, self.failures, self.error, self.ops = inner, failures, error, ops
        self.calls: Counter = Counter()
        self.raised: list[Exception] = []

    @property
    def name(self):
        return self.inner.name

    def _should_fail(self, op, key):
        self.calls[op, key] += 1
        return op in self.ops and self.calls[op, key] <= self.failures

    def _fail(self):
        exc = self.error()
        self.raised.append(exc)
        raise exc

    def put(self, key, source, *, size_hint=None):
        if self._should_fail("put", key):
            source.read(3)
            self._fail()
        return self.inner.put(key, source, size_hint=size_hint)

    def get(self, key):
        if self._should_fail("get", key):
            self._fail()
        return self.inner.get(key)

    def stat(self, key):
        if self._should_fail("stat", key):
            self._fail()
        return self.inner.stat(key)

    def list(self, prefix=""):
        failing = self._should_fail("list", prefix)
        fail_at = self.calls["list", prefix]  # each broken listing gets one object further

        def gen():
            for n, info in enumerate(self.inner.list(prefix)):
                if failing and n == fail_at:
                    self._fail()
                yield info
            if failing:
                self._fail()  # too few objects: fail at the end instead

        return gen()

    def delete(self, key):
        if self._should_fail("delete", key):
            self._fail()
        return self.inner.delete(key)


class Greedy(random.Random):
    """Always draws the top of the jitter range, so the cap itself is observable."""

    def uniform(self, a, b):
        return b


@pytest.fixture
def local(tmp_path):
    return LocalStorage("offsite", tmp_path / "tier")


@pytest.fixture
def sleeps():
    return []


# -- the wrapper keeps the contract, even over a flaky tier -----------------------------


class TestRetryingConformance(StorageConformance):
    @pytest.fixture
    def storage(self, local, sleeps):
        return RetryingStorage(local, sleep=sleeps.append)


class TestRetryingOverFlakyConformance(StorageConformance):
    """Every read, listing and delete fails once first. Puts are left alone here because
    these sources are pipes, which must not be retried (tested below)."""

    @pytest.fixture
    def storage(self, local, sleeps):
        return RetryingStorage(FlakyStorage(local, ops=ALL_OPS - {"put"}), sleep=sleeps.append)


# -- what is retried, and how -----------------------------------------------------------


def test_transient_failures_are_retried_until_success(local, sleeps):
    local.put("k", io.BytesIO(b"v"))
    flaky = FlakyStorage(local, failures=3)
    tier = RetryingStorage(flaky, attempts=4, sleep=sleeps.append)
    assert tier.stat("k").size == 1
    assert flaky.calls["stat", "k"] == 4 and len(sleeps) == 3


def test_gives_up_by_raising_the_last_error(local, sleeps):
    flaky = FlakyStorage(local, failures=10)
    tier = RetryingStorage(flaky, attempts=4, sleep=sleeps.append)
    with pytest.raises(TransientError) as caught:
        tier.delete("k")
    assert caught.value is flaky.raised[-1]
    assert flaky.calls["delete", "k"] == 4 and len(sleeps) == 3


def test_backoff_doubles_up_to_the_cap(local, sleeps):
    tier = RetryingStorage(FlakyStorage(local, failures=3), attempts=4, base_delay=0.5, sleep=sleeps.append, rng=Greedy())
    with pytest.raises(ObjectNotFound):
        tier.stat("k")
    assert sleeps == [0.5, 1.0, 2.0]

    capped: list[float] = []
    tier = RetryingStorage(FlakyStorage(local, failures=9), attempts=5, base_delay=10, max_delay=15,
                           sleep=capped.append, rng=Greedy())
    with pytest.raises(TransientError):
        tier.stat("k")
    assert capped == [10, 15, 15, 15]


def test_backoff_has_full_jitter_within_bounds(local, sleeps):
    tier = RetryingStorage(FlakyStorage(local, failures=3), attempts=4, base_delay=0.5,
                           sleep=sleeps.append, rng=random.Random(7))
    for n in range(60):
        with pytest.raises(ObjectNotFound):
            tier.stat(f"missing-{n}")
    by_attempt = [sleeps[i::3] for i in range(3)]
    for cap, delays in zip((0.5, 1.0, 2.0), by_attempt):
        assert all(0 <= d <= cap for d in delays)
        assert min(delays) < cap / 4 and max(delays) > cap * 3 / 4  # spread over the whole range
    assert max(by_attempt[2]) > 1.0  # later attempts may wait longer than the first cap


def test_connection_errors_become_service_unavailable(local, sleeps):
    flaky = FlakyStorage(local, failures=5, error=lambda: ConnectionResetError(104, "Connection reset by peer"))
    tier = RetryingStorage(flaky, attempts=3, sleep=sleeps.append)
    with pytest.raises(ServiceUnavailable) as caught:
        tier.stat("db/dump")
    err = caught.value
    assert isinstance(err, TransientError) and err.exit_code == 3
    assert isinstance(err.__cause__, ConnectionResetError)
    assert "offsite" in err.message and "stat" in err.message and "db/dump" in err.message
    assert err.remedy and len(sleeps) == 2


def test_timeouts_are_retried(local, sleeps):
    local.put("k", io.BytesIO(b"v"))
    tier = RetryingStorage(FlakyStorage(local, failures=2, error=lambda: TimeoutError("read timed out")),
                           sleep=sleeps.append)
    assert read_all(tier, "k") == b"v"
    assert len(sleeps) == 2


@pytest.mark.parametrize("error", [lambda: StorageError("disk full", "free space"), lambda: ValueError("a bug")])
def test_permanent_errors_and_bugs_are_not_retried(local, sleeps, error):
    flaky = FlakyStorage(local, failures=5, error=error)
    tier = RetryingStorage(flaky, sleep=sleeps.append)
    with pytest.raises(Exception) as caught:
        tier.stat("k")
    assert caught.value is flaky.raised[0]
    assert flaky.calls["stat", "k"] == 1 and sleeps == []


def test_missing_object_is_not_retried(local, sleeps):
    tier = RetryingStorage(local, sleep=sleeps.append)
    with pytest.raises(ObjectNotFound):
        tier.stat("nope")
    with pytest.raises(ObjectNotFound):
        with tier.get("nope"):
            pass
    assert sleeps == []


# -- put, get and list specifics ----------------------------------------------------------


def test_put_rewinds_a_seekable_source_to_where_it_started(local, sleeps):
    payload = b"payload " * 1000
    source = io.BytesIO(b"HEADER" + payload)
    source.seek(6)
    flaky = FlakyStorage(local, failures=2)
    info = RetryingStorage(flaky, sleep=sleeps.append).put("db/dump", source)
    assert info.sha256 == hashlib.sha256(payload).hexdigest()
    assert read_all(local, "db/dump") == payload
    assert flaky.calls["put", "db/dump"] == 3 and len(sleeps) == 2


def test_put_from_an_unseekable_source_is_not_retried(local, sleeps):
    source = GeneratedReader(pattern_chunks(1024))
    assert not source.seekable()
    flaky = FlakyStorage(local, failures=1)
    with pytest.raises(TransientError) as caught:
        RetryingStorage(flaky, sleep=sleeps.append).put("db/dump", source)
    assert caught.value is flaky.raised[0]
    assert flaky.calls["put", "db/dump"] == 1 and sleeps == []
    with pytest.raises(ObjectNotFound):
        local.stat("db/dump")


def test_get_retries_opening(local, sleeps):
    local.put("k", io.BytesIO(b"contents"))
    flaky = FlakyStorage(local, failures=2)
    tier = RetryingStorage(flaky, sleep=sleeps.append)
    with tier.get("k") as stream:
        assert stream.read() == b"contents"
    assert flaky.calls["get", "k"] == 3


def test_get_closes_the_stream_when_the_body_raises(local):
    local.put("k", io.BytesIO(b"contents"))
    tier = RetryingStorage(local)
    with pytest.raises(RuntimeError):
        with tier.get("k") as stream:
            raise RuntimeError("caller failed")
    assert stream.closed


def test_list_resumes_after_the_last_key_without_duplicates(local, sleeps):
    names = [f"t/{n:02d}" for n in range(5)]
    for name in names:
        local.put(name, io.BytesIO(b"x"))
    flaky = FlakyStorage(local, failures=3)
    tier = RetryingStorage(flaky, attempts=2, sleep=sleeps.append)
    # Each broken listing made progress first, so two attempts suffice for three breaks.
    assert keys(tier.list("t/")) == names
    assert len(sleeps) == 3


def test_list_without_progress_gives_up(local, sleeps):
    flaky = FlakyStorage(local, failures=5)  # an empty listing fails before yielding anything
    tier = RetryingStorage(flaky, attempts=3, sleep=sleeps.append)
    with pytest.raises(TransientError):
        list(tier.list("empty/"))
    assert flaky.calls["list", "empty/"] == 3 and len(sleeps) == 2


def test_name_is_the_inner_tiers(local):
    assert RetryingStorage(local).name == "offsite"


def test_attempts_must_be_positive(local):
    with pytest.raises(ValueError):
        RetryingStorage(local, attempts=0)


# -- capabilities: the wrappers have exactly those of the tier inside -------------------


class LockingFlaky(FlakyStorage):
    """A flaky tier that also has Object Lock, stale uploads and a probe, each failing
    ``failures`` times first like the five operations."""

    def locked_until(self, key):
        if self._should_fail("locked_until", key):
            self._fail()
        return None

    def abort_stale_uploads(self, older_than, *, prefix="", dry_run=False):
        if self._should_fail("abort_stale_uploads", "/"):
            self._fail()
        return ["t/b1/data"]

    def probe(self, timeout):
        if self._should_fail("probe", ""):
            self._fail()
        return "answers"


def test_wrappers_claim_exactly_the_capabilities_of_the_tier_inside(local):
    from datetime import datetime, timezone

    from backup_tasks.storage.capabilities import DiskSpace, ObjectLock, PartialWrites, Probe, StaleUploads
    from backup_tasks.storage.throttle import ThrottledStorage

    for wrapped in (RetryingStorage(local), ThrottledStorage(local, 1 << 30),
                    RetryingStorage(ThrottledStorage(local, 1 << 30))):
        assert isinstance(wrapped, Probe) and isinstance(wrapped, DiskSpace) and isinstance(wrapped, PartialWrites)
        assert wrapped.remove_partial_writes("t/", datetime.now(timezone.utc)) == []
        assert not isinstance(wrapped, ObjectLock) and not isinstance(wrapped, StaleUploads)
        assert wrapped.disk_state().mounted is None and wrapped.disk_state().usage is not None
        assert wrapped.probe(1) == local.probe(1)
    locking = LockingFlaky(local, failures=0)
    for wrapped in (RetryingStorage(locking), RetryingStorage(ThrottledStorage(locking, 1 << 30))):
        assert isinstance(wrapped, ObjectLock) and isinstance(wrapped, StaleUploads) and isinstance(wrapped, Probe)
        assert not isinstance(wrapped, DiskSpace) and not isinstance(wrapped, PartialWrites)
        assert isinstance(wrapped, RetryingStorage)  # still the wrapper it was asked for


def test_lock_queries_and_stale_upload_aborts_are_retried_but_a_probe_never(local, sleeps):
    flaky = LockingFlaky(local, failures=2, ops={"locked_until", "abort_stale_uploads", "probe"})
    tier = RetryingStorage(flaky, attempts=3, sleep=sleeps.append)
    assert tier.locked_until("t/b1/data") is None and flaky.calls["locked_until", "t/b1/data"] == 3
    assert tier.abort_stale_uploads(None, dry_run=True) == ["t/b1/data"]
    assert flaky.calls["abort_stale_uploads", "/"] == 3
    with pytest.raises(TransientError):
        tier.probe(1)  # health reports what is true now
    assert flaky.calls["probe", ""] == 1
