"""Runbook: zstd written as independent frames reads back in parallel, and stays plain zstd.

A backup's zstd stream is a sequence of frames, each led by pzstd's skippable frame that
gives its compressed size, so verify and restore decompress two frames at once. What a
disaster needs must not change: ``age -d | zstd -d | tar -x`` recovers such a backup with
the standard tools alone, and objects written before (one frame, no size headers) still
verify and restore through the sequential path.
"""

from __future__ import annotations

import io
import json
import random
import struct
import subprocess
import threading

import pytest
import zstandard

from backup_tasks import client, defaults
from backup_tasks.records import keys
from backup_tasks.stages.compress import compress, decompressing_reader
from backup_tasks.stages.zstd_frames import HEADER, SKIPPABLE_MAGIC, compress_frames
from conftest import run_cli
from fixtures.old_form_listing.make import snapshot as tree_of
from test_old_form_listing import POINTS, old_store  # noqa: F401 - backups stored by the code of before, and their keys
from test_tamper_and_interop import _pipe

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def _plaintext(n: int, seed: int = 3) -> bytes:
    """Compressible rows with some noise, like a dump."""
    rng = random.Random(seed)
    rows = (b"%d\tcustomer-%d\t%s\n" % (i, rng.randrange(10**6), rng.randbytes(rng.randrange(12)).hex().encode())
            for i in range(n // 20 + 1))
    return b"".join(rows)[:n]


def _frames(data: bytes) -> list[int]:
    """The compressed size of every frame, walking the size headers (and checking there is nothing else)."""
    sizes, pos = [], 0
    while pos < len(data):
        magic, length, size = HEADER.unpack_from(data, pos)
        assert (magic, length) == (SKIPPABLE_MAGIC, 4)
        assert data[pos + HEADER.size:pos + HEADER.size + 4] == ZSTD_MAGIC
        sizes.append(size)
        pos += HEADER.size + size
    assert pos == len(data)
    return sizes


def _read_all(reader, sizes=(1, 777, 1 << 16, 1 << 20)) -> bytes:
    rng = random.Random(1)
    out = bytearray()
    while True:
        if rng.random() < 0.3:
            buf = bytearray(rng.choice(sizes))
            n = reader.readinto(buf)
            chunk = bytes(buf[:n])
        else:
            chunk = reader.read(rng.choice(sizes))
        if not chunk:
            return bytes(out)
        out += chunk


def _zstd_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(("readahead-zstd", "zstd-frames"))]


@pytest.mark.parametrize("size", [0, 1, 65_535, 65_536, 200_001])
@pytest.mark.parametrize("threads", [0, 2, 3])
def test_frames_round_trip_in_order_and_every_zstd_tool_reads_them(size, threads):
    data = _plaintext(size)
    out = io.BytesIO()
    compress_frames(io.BytesIO(data), out, level=3, threads=threads, frame_size=1 << 16)
    stored = out.getvalue()
    assert len(_frames(stored)) == max(1, -(-size // (1 << 16)))  # an empty input is one empty frame
    for read_threads in (1, 2):
        assert _read_all(decompressing_reader(io.BytesIO(stored), "zstd", threads=read_threads)) == data
    assert subprocess.run(["zstd", "-d", "-c"], input=stored, capture_output=True, check=True).stdout == data
    if size:  # pzstd, zstd's own parallel tool, reads the same convention
        assert subprocess.run(["pzstd", "-d", "-c"], input=stored, capture_output=True, check=True).stdout == data
    assert _zstd_threads() == []


def test_the_same_input_gives_the_same_bytes_whatever_the_thread_count():
    data = _plaintext(300_000)
    outs = []
    for threads in (0, 1, 2, 4):
        out = io.BytesIO()
        compress_frames(io.BytesIO(data), out, level=3, threads=threads, frame_size=1 << 16)
        outs.append(out.getvalue())
    assert len(set(outs)) == 1  # a redelivered compress stage writes what the first one did


def test_one_frame_as_written_before_and_frames_followed_by_plain_zstd_read_sequentially():
    data = _plaintext(3 << 20)
    old = io.BytesIO()
    params = zstandard.ZstdCompressionParameters.from_level(3, threads=2, job_size=1 << 20, write_checksum=1)
    zstandard.ZstdCompressor(compression_params=params).copy_stream(io.BytesIO(data), old)  # the writer of before
    assert old.getvalue()[:4] == ZSTD_MAGIC
    assert _read_all(decompressing_reader(io.BytesIO(old.getvalue()), "zstd")) == data
    framed = io.BytesIO()
    compress(io.BytesIO(data), framed, "zstd")
    # frames with headers, then zstd frames any other writer appended
    both = framed.getvalue() + old.getvalue() + zstandard.ZstdCompressor().compress(b"tail\n")
    assert _read_all(decompressing_reader(io.BytesIO(both), "zstd")) == data + data + b"tail\n"
    assert _zstd_threads() == []


def test_a_damaged_frame_fails_after_the_good_ones_before_it_were_handed_out():
    data = _plaintext(400_000)
    out = io.BytesIO()
    compress_frames(io.BytesIO(data), out, level=3, threads=2, frame_size=1 << 16)
    stored = bytearray(out.getvalue())
    sizes = _frames(bytes(stored))
    third = sum(HEADER.size + s for s in sizes[:3])
    stored[third + HEADER.size + 40:third + HEADER.size + 60] = b"\xff" * 20  # inside the fourth frame
    reader = decompressing_reader(io.BytesIO(bytes(stored)), "zstd")
    got = bytearray()
    with pytest.raises(zstandard.ZstdError):
        while chunk := reader.read(10_000):
            got += chunk
    assert bytes(got) == data[:3 << 16]  # every byte of the three good frames, nothing after
    with pytest.raises(zstandard.ZstdError):  # and again: a consumer that swallowed it sees no clean end
        reader.read(1)
    assert _zstd_threads() == []


@pytest.mark.parametrize("damage", ["truncated", "size-field"])
def test_a_truncated_object_or_a_damaged_size_field_is_a_zstd_error(damage):
    out = io.BytesIO()
    compress_frames(io.BytesIO(_plaintext(200_000)), out, level=3, threads=2, frame_size=1 << 16)
    stored = bytearray(out.getvalue())
    if damage == "truncated":
        stored = stored[:-100]
    else:
        struct.pack_into("<I", stored, 8, 0xFFFFFFF0)  # the first frame's size
    with pytest.raises(zstandard.ZstdError):
        _read_all(decompressing_reader(io.BytesIO(bytes(stored)), "zstd"))
    assert _zstd_threads() == []


def test_a_reader_closed_half_way_stops_its_threads():
    out = io.BytesIO()
    compress_frames(io.BytesIO(_plaintext(1 << 20)), out, level=3, threads=2, frame_size=1 << 16)
    reader = decompressing_reader(io.BytesIO(out.getvalue()), "zstd")
    assert reader.read(1000)
    assert _zstd_threads()
    reader.close()
    assert _zstd_threads() == []


@pytest.fixture
def framed_backup(tmp_path, make_config, runtime_for, monkeypatch):
    """A files backup written in 64 KiB frames: a few MiB give dozens of frames."""
    monkeypatch.setattr(defaults, "ZSTD_FRAME_SIZE", 1 << 16)
    rng = random.Random(7)
    tree = tmp_path / "site"
    (tree / "logs").mkdir(parents=True)
    for i in range(4):
        (tree / f"blob{i}.bin").write_bytes(rng.randbytes(300_000))
        (tree / "logs" / f"access{i}.log").write_bytes(_plaintext(400_000, seed=i))
    cfg = make_config(f'[targets.site]\nkind = "files"\npaths = ["{tree}"]\n')
    rt = runtime_for(cfg)
    info = client.enqueue_backup("site", rt=rt).wait()
    assert info["status"] == "verified"
    loc = info["locations"][0]
    return rt, cfg, info, tree, rt.storage(loc["tier"]).inner.root / loc["key"]


def test_a_backup_in_many_frames_verifies_restores_and_the_clis_recover_it(framed_backup, tmp_path, session_keys):
    rt, cfg, info, tree, artifact = framed_backup
    compressed = subprocess.run(["age", "-d", "-i", str(session_keys / keys.IDENTITY_FILE), str(artifact)],
                                capture_output=True, check=True).stdout
    assert len(_frames(compressed)) > 20

    result = json.loads(run_cli("verify", info["id"], "--json", config=cfg, check=0).stdout)
    assert result["ok"] is True
    restored = tmp_path / "restored"
    run_cli("restore", info["id"], "--to", str(restored), "--json", config=cfg, check=0)
    original = tree / "logs" / "access2.log"
    assert (restored / str(original).lstrip("/")).read_bytes() == original.read_bytes()

    # The disaster runbook, unchanged: age and zstd alone, then GNU tar.
    dest = tmp_path / "untarred"
    dest.mkdir()
    _pipe([["age", "-d", "-i", str(session_keys / keys.IDENTITY_FILE), str(artifact)], ["zstd", "-d", "-c"],
           ["tar", "-x", "-C", str(dest)]], None)
    for path in tree.rglob("*"):
        if path.is_file():
            assert (dest / str(path).lstrip("/")).read_bytes() == path.read_bytes()


def test_a_backup_stored_before_frames_is_one_plain_frame_and_still_verifies_and_restores(old_store, tmp_path):  # noqa: F811
    cfg = old_store
    full = POINTS["full"]
    identity = tmp_path / "keys" / "age-identity.txt"
    artifact = next((tmp_path / "store").rglob(f"{full}/data.tar.zst.age"))
    compressed = subprocess.run(["age", "-d", "-i", str(identity), str(artifact)], capture_output=True, check=True).stdout
    assert compressed[:4] == ZSTD_MAGIC  # no size header: the sequential path reads it

    run_cli("catalog", "rebuild", "--json", config=cfg, check=0)
    assert json.loads(run_cli("verify", full, "--json", config=cfg, check=0).stdout)["ok"] is True
    restored = tmp_path / "restored"
    run_cli("restore", full, "--to", str(restored), "--json", config=cfg, check=0)
    prefix = POINTS["tree"].lstrip("/")
    assert tree_of(restored / prefix) == POINTS["points"][full]
