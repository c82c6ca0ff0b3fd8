"""Runbook: a backup read back decompresses and hashes beside its consumer, and stops cleanly.

Decompression and the plaintext sha256 run in threads of their own, and a large object is
decrypted in a child process. Whatever happens to the consumer (it stops half-way, the
object is damaged), the threads and the child end with the read, the stored object is
still hashed to its end, and the errors are the ones a reader without threads would give.
Each runbook runs both ways: decryption in a thread (small objects) and in a child.
"""

from __future__ import annotations

import hashlib
import io
import random
import sys
import threading

import psutil
import pyrage
import pytest
import zstandard

from backup_tasks import client, defaults
from backup_tasks.errors import VerificationFailed
from backup_tasks.ops import readback
from backup_tasks.ops.verify import verify_backup
from backup_tasks.stages.readahead import ReadaheadHashingReader


def _left_running() -> list[threading.Thread]:
    """What must be gone after a read-back: its threads, and its decrypting child with the thread feeding it."""
    children = [p for p in psutil.Process().children(recursive=True) if "age_child" in " ".join(p.cmdline())]
    return [t for t in threading.enumerate() if t.name.startswith(("readahead", "age-"))] + children


def _read_back_failing(rt, found):
    """Read a damaged backup back to its end as verify does: (the VerificationFailed raised, the stored-bytes hasher)."""
    with pytest.raises(VerificationFailed) as caught:
        with readback.plaintext(rt, found) as (stream, stored, plain):
            while stream.read(1 << 16):
                pass
    return caught.value, stored


@pytest.fixture(params=["thread", "child"])
def site_backup(request, tmp_path, make_config, runtime_for, monkeypatch):
    """A files backup of a few MiB: several 1 MiB chunks pass through the queues. Read back
    with decryption in a thread, then in a child process (as an object of 64 MiB or more is)."""
    if request.param == "child":
        monkeypatch.setattr(defaults, "DECRYPT_IN_CHILD_FROM_BYTES", 0)
    rng = random.Random(5)
    tree = tmp_path / "site"
    tree.mkdir()
    for i in range(6):
        (tree / f"part{i}.bin").write_bytes(rng.randbytes(700_000))
        (tree / f"part{i}.log").write_text("GET /index.html 200\n" * 20_000)
    cfg = make_config(f'[targets.site]\nkind = "files"\npaths = ["{tree}"]\n')
    rt = runtime_for(cfg)
    info = client.enqueue_backup("site", rt=rt).wait()
    assert info["status"] == "verified"
    return rt, readback.locate(rt, rt.catalog.get(info["id"]))


def test_a_consumer_that_fails_half_way_leaves_no_thread_and_the_stored_object_hashed_in_full(site_backup):
    rt, found = site_backup
    doc = found.doc
    with pytest.raises(RuntimeError, match="check gave up"):
        with readback.plaintext(rt, found) as (stream, stored, plain):
            assert stream.read(1000)
            raise RuntimeError("check gave up")
    assert _left_running() == []
    assert (stored.size, stored.sha256) == (doc["stored"]["size"], doc["stored"]["sha256"])
    assert plain.size == 1000


def test_the_plaintext_hash_covers_exactly_what_was_read_whatever_the_read_sizes(site_backup):
    rt, found = site_backup
    doc = found.doc
    seen = hashlib.sha256()
    with readback.plaintext(rt, found) as (stream, stored, plain):
        in_child = [p for p in psutil.Process().children() if "age_child" in " ".join(p.cmdline())]
        assert len(in_child) == (1 if defaults.DECRYPT_IN_CHILD_FROM_BYTES == 0 else 0)
        first = stream.read(12345)
        buf = bytearray(3 << 20)
        n = stream.readinto(buf)
        seen.update(first + bytes(buf[:n]))
        assert plain.size == len(first) + n and plain.sha256 == seen.hexdigest()  # a chunk read in part
        rest = stream.read()
        seen.update(rest)
        assert stream.read(10) == b""
    readback.check_digests(doc, stored, plain)
    assert plain.sha256 == seen.hexdigest() == doc["plaintext"]["sha256"]
    assert _left_running() == []


def test_a_damaged_zstd_frame_fails_as_decompress_and_stops_the_threads(site_backup, session_keys):
    rt, found = site_backup
    path = rt.storage(found.tier).inner.root / found.key
    identity = pyrage.x25519.Identity.from_str((session_keys / "age-identity.txt").read_text().split()[-1])
    compressed = bytearray(pyrage.decrypt(path.read_bytes(), [identity]))
    compressed[len(compressed) // 2:len(compressed) // 2 + 64] = b"\xff" * 64
    # written as a damaged backup would have been: the stored hashes are the manifest's
    recipient = identity.to_public()
    path.write_bytes(pyrage.encrypt(bytes(compressed), [recipient]))
    stored_size = path.stat().st_size
    failure, stored = _read_back_failing(rt, found)
    assert failure.check == "decompress" and "decompression failed" in failure.message
    assert _left_running() == []
    assert stored.size == stored_size


def test_an_altered_object_fails_on_its_stored_hash_and_is_still_read_to_its_end(site_backup):
    rt, found = site_backup
    path = rt.storage(found.tier).inner.root / found.key
    stored_bytes = bytearray(path.read_bytes())
    stored_bytes[len(stored_bytes) // 2] ^= 0x01  # one bit, behind our back: age's tag on that chunk fails
    path.write_bytes(bytes(stored_bytes))
    failure, stored = _read_back_failing(rt, found)
    assert failure.check == "decrypt" and "age decryption failed" in failure.message
    assert _left_running() == []
    assert stored.size == len(stored_bytes)
    with pytest.raises(VerificationFailed) as caught:  # verify names the decisive evidence first
        verify_backup(rt, found.doc["backup_id"])
    assert caught.value.check == "stored-sha256"
    assert _left_running() == []


def test_a_child_that_cannot_start_leaves_decryption_to_a_thread(site_backup, monkeypatch, caplog):
    rt, found = site_backup
    monkeypatch.setattr(defaults, "DECRYPT_IN_CHILD_FROM_BYTES", 0)
    monkeypatch.setattr(sys, "executable", "/nonexistent/python3")  # a host where no interpreter can be started
    with readback.plaintext(rt, found) as (stream, stored, plain):
        while stream.read(1 << 20):
            pass
    readback.check_digests(found.doc, stored, plain)
    assert "decrypting in a thread, a child process could not start" in caplog.text
    assert _left_running() == []


def test_an_error_is_raised_again_on_every_later_read():
    data = zstandard.ZstdCompressor(write_checksum=True).compress(b"".join(b"row %d\n" % i for i in range(400_000)))
    damaged = data[: len(data) // 2] + b"\x00" * 32 + data[len(data) // 2 + 32:]
    reader = ReadaheadHashingReader(zstandard.ZstdDecompressor().stream_reader(io.BytesIO(damaged)))
    try:
        with pytest.raises(zstandard.ZstdError):
            while reader.read(1 << 20):
                pass
        with pytest.raises(zstandard.ZstdError):  # a consumer that swallowed it does not see a clean end
            reader.drain()
    finally:
        reader.close()
    assert _left_running() == []
