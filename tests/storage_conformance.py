"""The contract every storage tier (and every wrapper) must keep, as one test class.

A tier's test module provides a ``storage`` fixture returning an empty tier and
subclasses ``StorageConformance``:

    @pytest.fixture
    def storage(tmp_path):
        return LocalStorage("local", tmp_path / "tier")

    class TestLocalConformance(StorageConformance):
        pass

The sources used here are non-seekable streams produced on demand, like a pipe from
pg_dump, so a tier cannot pass by seeking back or by reading everything first.
"""

from __future__ import annotations

import hashlib
import io
import threading
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from typing import Iterator

import pytest

from backup_tasks.errors import InputError, ObjectNotFound
from backup_tasks.storage.base import ObjectInfo

MiB = 1024 * 1024


class SourceBroke(Exception):
    """Raised by a test source mid-stream, like a dump process that died."""


def pattern_chunks(size: int, seed: bytes = b"seed") -> Iterator[bytes]:
    """``size`` deterministic, incompressible bytes in 1 MiB pieces, generated lazily."""
    block = hashlib.shake_256(seed).digest(MiB)
    sent, index = 0, 0
    while sent < size:
        n = min(MiB, size - sent)
        yield (index.to_bytes(8, "big") + block[8:n]) if n > 8 else block[:n]
        sent, index = sent + n, index + 1


def sha256_of(chunks: Iterator[bytes]) -> str:
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
    return digest.hexdigest()


class GeneratedReader(io.RawIOBase):
    """A readable, non-seekable stream over a generator of byte chunks.

    Short reads are normal (at most one pending chunk per read), as from a pipe. An
    exception raised by the generator comes out of ``read``, as from a broken source.
    """

    def __init__(self, chunks: Iterator[bytes]) -> None:
        super().__init__()
        self._chunks = chunks
        self._pending = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self._pending:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._pending = memoryview(chunk)
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n


def breaking_chunks(good_bytes: int) -> Iterator[bytes]:
    yield from pattern_chunks(good_bytes)
    raise SourceBroke("the dump process died")


def read_all(storage, key: str) -> bytes:
    with storage.get(key) as stream:
        return stream.read()


def keys(infos) -> list[str]:
    return [info.key for info in infos]


class StorageConformance:
    """Behaviour every tier shares. Override ``max_put_peak_bytes`` only with a reason."""

    #: Python-heap peak allowed while putting a 64 MiB stream; a tier that buffers
    #: whole objects fails this.
    max_put_peak_bytes = 8 * MiB

    # -- round trips -----------------------------------------------------------------

    def test_empty_object_round_trips(self, storage):
        info = storage.put("t/empty", io.BytesIO(b""))
        assert info.size == 0
        assert info.sha256 in (None, hashlib.sha256(b"").hexdigest())
        assert read_all(storage, "t/empty") == b""
        assert storage.stat("t/empty").size == 0
        assert keys(storage.list()) == ["t/empty"]

    def test_small_object_round_trips_with_its_description(self, storage):
        data = b"hello\x00world\n" * 100
        before = datetime.now(timezone.utc) - timedelta(seconds=5)
        info = storage.put("school-db/2024-05-01T02:00:00Z/dump.pgc.zst.age", io.BytesIO(data))
        assert isinstance(info, ObjectInfo)
        assert (info.key, info.size) == ("school-db/2024-05-01T02:00:00Z/dump.pgc.zst.age", len(data))
        assert info.sha256 == hashlib.sha256(data).hexdigest()
        assert info.modified.tzinfo is not None and info.modified.utcoffset() == timedelta(0)
        assert before <= info.modified <= datetime.now(timezone.utc) + timedelta(seconds=5)
        assert read_all(storage, info.key) == data
        stat = storage.stat(info.key)
        assert (stat.key, stat.size) == (info.key, len(data))
        assert stat.modified.utcoffset() == timedelta(0)

    @pytest.mark.slow
    def test_64_mib_object_streams_in_bounded_memory(self, storage):
        size = 64 * MiB
        tracemalloc.start()
        try:
            tracemalloc.reset_peak()
            info = storage.put("big/object", GeneratedReader(pattern_chunks(size)), size_hint=size)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < self.max_put_peak_bytes, f"put of 64 MiB peaked at {peak / MiB:.1f} MiB of Python heap"
        expected = sha256_of(pattern_chunks(size))
        assert (info.size, info.sha256 or expected) == (size, expected)
        digest, total = hashlib.sha256(), 0
        with storage.get("big/object") as stream:
            while chunk := stream.read(MiB):
                digest.update(chunk)
                total += len(chunk)
        assert (total, digest.hexdigest()) == (size, expected)
        assert storage.stat("big/object").size == size

    def test_put_overwrites_and_is_safe_to_repeat(self, storage):
        storage.put("k/obj", io.BytesIO(b"first version"))
        storage.put("k/obj", io.BytesIO(b"second"))
        assert read_all(storage, "k/obj") == b"second"
        again = storage.put("k/obj", io.BytesIO(b"second"))
        assert again.size == 6
        assert read_all(storage, "k/obj") == b"second"
        assert keys(storage.list()) == ["k/obj"]

    # -- atomicity -------------------------------------------------------------------

    def test_source_failing_mid_stream_leaves_nothing(self, storage):
        with pytest.raises(SourceBroke):
            storage.put("run/artifact", GeneratedReader(breaking_chunks(3 * MiB)))
        with pytest.raises(ObjectNotFound):
            storage.stat("run/artifact")
        assert list(storage.list()) == []

    def test_failed_overwrite_keeps_the_old_object(self, storage):
        storage.put("run/artifact", io.BytesIO(b"the good copy"))
        with pytest.raises(SourceBroke):
            storage.put("run/artifact", GeneratedReader(breaking_chunks(2 * MiB)))
        assert read_all(storage, "run/artifact") == b"the good copy"
        assert keys(storage.list()) == ["run/artifact"]

    def test_object_in_flight_is_invisible(self, storage):
        storage.put("run/other", io.BytesIO(b"x"))
        halfway, release = threading.Event(), threading.Event()

        def stalled() -> Iterator[bytes]:
            yield b"a" * MiB
            halfway.set()
            assert release.wait(10)
            yield b"b" * MiB

        with ThreadPoolExecutor(1) as pool:
            future = pool.submit(storage.put, "run/artifact", GeneratedReader(stalled()))
            try:
                assert halfway.wait(10)
                assert keys(storage.list()) == ["run/other"]
                assert keys(storage.list("run/art")) == []
                with pytest.raises(ObjectNotFound):
                    storage.stat("run/artifact")
            finally:
                release.set()
            assert future.result(10).size == 2 * MiB
        assert keys(storage.list()) == ["run/artifact", "run/other"]

    # -- missing keys ----------------------------------------------------------------

    def test_missing_key_raises_object_not_found(self, storage):
        with pytest.raises(ObjectNotFound):
            storage.stat("no/such/key")
        with pytest.raises(ObjectNotFound):
            with storage.get("no/such/key"):
                pass

    def test_a_key_prefix_is_not_an_object(self, storage):
        storage.put("dir/leaf", io.BytesIO(b"x"))
        with pytest.raises(ObjectNotFound):
            storage.stat("dir")
        with pytest.raises(ObjectNotFound):
            with storage.get("dir"):
                pass
        with pytest.raises(ObjectNotFound):
            storage.stat("dir/leaf/below")

    # -- listing ---------------------------------------------------------------------

    def test_list_of_an_empty_tier_is_empty(self, storage):
        assert list(storage.list()) == []
        assert list(storage.list("any/prefix/")) == []

    def test_list_is_sorted_by_key_with_string_prefixes(self, storage):
        # '-' sorts before '/', so a naive directory walk gets this order wrong.
        names = ["a/b/c", "a/b-c", "a/bc", "a-b", "a/b/d/e", "b", "ab", "a/b/d-x"]
        for i, name in enumerate(names):
            storage.put(name, io.BytesIO(b"x" * i))
        listed = list(storage.list())
        assert keys(listed) == sorted(names)
        assert {info.key: info.size for info in listed} == {name: i for i, name in enumerate(names)}
        assert all(isinstance(info, ObjectInfo) for info in listed)
        assert keys(storage.list("a/")) == sorted(n for n in names if n.startswith("a/"))
        assert keys(storage.list("a/b")) == ["a/b-c", "a/b/c", "a/b/d-x", "a/b/d/e", "a/bc"]
        assert keys(storage.list("a/b/")) == ["a/b/c", "a/b/d-x", "a/b/d/e"]
        assert keys(storage.list("a/b/c")) == ["a/b/c"]
        assert keys(storage.list("a")) == sorted(n for n in names if n.startswith("a"))
        assert keys(storage.list("zzz")) == []
        assert keys(storage.list("b/")) == []

    # -- delete ----------------------------------------------------------------------

    def test_delete_is_idempotent(self, storage):
        storage.put("t/one", io.BytesIO(b"1"))
        storage.put("t/two", io.BytesIO(b"2"))
        storage.delete("t/one")
        with pytest.raises(ObjectNotFound):
            storage.stat("t/one")
        storage.delete("t/one")
        storage.delete("never/was/here")
        storage.delete("t")  # a prefix, not an object
        assert keys(storage.list()) == ["t/two"]
        storage.delete("t/two")
        assert list(storage.list()) == []
        storage.put("t/two", io.BytesIO(b"again"))  # the tier still works after emptying
        assert read_all(storage, "t/two") == b"again"

    # -- keys ------------------------------------------------------------------------

    @pytest.mark.parametrize(
        "key",
        ["", "/abs", "a//b", "a/", "..", ".", "a/../b", "./a", "a/./b", "a\\b", "a\x00b",
         ".hidden", "a/.tmp", "sp ace", "ümlaut", "a/" + "x" * 300],
    )
    def test_invalid_keys_are_refused_by_every_operation(self, storage, key):
        for call in (
            lambda: storage.put(key, io.BytesIO(b"x")),
            lambda: storage.stat(key),
            lambda: storage.delete(key),
            lambda: storage.get(key).__enter__(),
        ):
            with pytest.raises(InputError) as caught:
                call()
            assert repr(key) in caught.value.message
            assert caught.value.remedy
        assert list(storage.list()) == []

    @pytest.mark.parametrize("prefix", ["/a", "../", "a/../", "a\\", "a\x00", "a//", ".x"])
    def test_invalid_prefixes_are_refused_when_passed(self, storage, prefix):
        with pytest.raises(InputError):
            storage.list(prefix)  # not iterated: refusal must not wait for next()

    def test_every_allowed_character_works(self, storage):
        key = "t_1/a-b.c+d=e@f,g:h~i/Z9"
        storage.put(key, io.BytesIO(b"ok"))
        assert read_all(storage, key) == b"ok"
        assert keys(storage.list("t_1/")) == [key]

    # -- concurrency -----------------------------------------------------------------

    def test_concurrent_puts_and_deletes_of_different_keys(self, storage):
        old = [f"shared/dir/old-{n}" for n in range(12)]
        for key in old:
            storage.put(key, io.BytesIO(b"old"))
        new = [f"shared/dir/new-{n}" for n in range(12)] + [f"shared/{n % 3}/x{n}" for n in range(12)]

        def put(key: str) -> None:
            storage.put(key, GeneratedReader(pattern_chunks(64 * 1024 + len(key), seed=key.encode())))

        with ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(put, key) for key in new] + [pool.submit(storage.delete, key) for key in old]
            for future in futures:
                future.result(30)
        assert keys(storage.list()) == sorted(new)
        for key in new:
            with storage.get(key) as stream:
                got = sha256_of(iter(lambda: stream.read(MiB), b""))
            assert got == sha256_of(pattern_chunks(64 * 1024 + len(key), seed=key.encode())), key
