"""TarScanner reads what Python's tarfile reads, from any chunking, and refuses broken streams.

Archives here are written by Python's tarfile in the three formats it knows (GNU tar's
own pax output is exercised end to end in test_files_source.py). Every listing is
compared field by field with what tarfile itself reports for the same bytes.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import tarfile
import tracemalloc

import pytest

from backup_tasks.sources.files.tarstream import TarScanner, TarStreamError, parse_pax_records, scan_stream

LONG_DIR = "deep/" + "d" * 80 + "/" + "e" * 70  # > 100 chars: ustar prefix, GNU 'L', pax path
TYPE_NAMES = {tarfile.REGTYPE: "file", tarfile.DIRTYPE: "dir", tarfile.SYMTYPE: "symlink", tarfile.LNKTYPE: "hardlink"}


def _add(archive: tarfile.TarFile, name: str, data: bytes | None = None, **attrs) -> None:
    info = tarfile.TarInfo(name)
    info.mtime = attrs.pop("mtime", 1_700_000_000)
    for key, value in attrs.items():
        setattr(info, key, value)
    if data is not None:
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    else:
        archive.addfile(info)


def build_archive(fmt: int) -> bytes:
    """A small archive with every member shape the scanner must get right in ``fmt``."""
    buf = io.BytesIO()
    pax = fmt == tarfile.PAX_FORMAT
    unicode = "ünïcødé/設定.conf" if fmt != tarfile.USTAR_FORMAT else "plain/ascii.conf"
    with tarfile.open(fileobj=buf, mode="w", format=fmt, pax_headers={"comment": "global"} if pax else None) as tf:
        _add(tf, "top", type=tarfile.DIRTYPE, mode=0o755)
        _add(tf, "top/empty", type=tarfile.DIRTYPE, mode=0o700)
        for size in (0, 1, 511, 512, 513, 4096 + 7):
            _add(tf, f"top/size-{size}", os.urandom(size), mode=0o644)
        _add(tf, "top/secret", b"s3cret\n", mode=0o400)
        _add(tf, "top/run.sh", b"#!/bin/sh\n", mode=0o755)
        _add(tf, f"top/{unicode}", b"unicode\n", mode=0o600)
        _add(tf, f"top/{LONG_DIR}/long-name.txt", os.urandom(3000), mode=0o640)
        _add(tf, "top/link", type=tarfile.SYMTYPE, linkname="size-1", mode=0o777)
        _add(tf, "top/hard", type=tarfile.LNKTYPE, linkname="top/secret", mode=0o400)
        _add(tf, "top/fifo", type=tarfile.FIFOTYPE, mode=0o600)
        if fmt != tarfile.USTAR_FORMAT:  # ustar cannot hold a link target > 100 chars
            _add(tf, "top/long-link", type=tarfile.SYMTYPE, linkname="x" * 150, mode=0o777)
        if pax:
            _add(tf, "top/subsecond", b"time\n", mtime=1_700_000_000.123456, mode=0o644)
    return buf.getvalue()


def tarfile_listing(data: bytes) -> list[dict]:
    """The reference: what Python's tarfile says is in ``data``."""
    entries = []
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tf:
        for m in tf:
            entry = {"path": m.name, "type": TYPE_NAMES.get(m.type, "other"),
                     "size": m.size if m.isreg() else 0, "mode": m.mode, "mtime": float(m.mtime)}
            if m.isreg():
                entry["sha256"] = hashlib.sha256(tf.extractfile(m).read()).hexdigest()
            if m.issym() or m.islnk():
                entry["link"] = m.linkname
            entries.append(entry)
    return entries


def feed_in_chunks(data: bytes, size: int) -> list[dict]:
    scanner = TarScanner()
    for start in range(0, len(data), size):
        scanner.feed(data[start : start + size])
    return scanner.close()


FORMATS = {"pax": tarfile.PAX_FORMAT, "gnu": tarfile.GNU_FORMAT, "ustar": tarfile.USTAR_FORMAT}


@pytest.mark.parametrize("fmt", FORMATS.values(), ids=FORMATS.keys())
@pytest.mark.parametrize("chunk", [1, 511, 513, 65536])
def test_scanner_agrees_with_tarfile_in_any_chunking(fmt, chunk):
    data = build_archive(fmt)
    expected = tarfile_listing(data)
    assert feed_in_chunks(data, chunk) == expected
    assert len(expected) >= 15


def test_pax_keeps_subsecond_mtime_long_names_and_unicode():
    entries = {e["path"]: e for e in scan_stream(io.BytesIO(build_archive(tarfile.PAX_FORMAT)))}
    assert entries["top/subsecond"]["mtime"] == pytest.approx(1_700_000_000.123456, abs=1e-6)
    assert f"top/{LONG_DIR}/long-name.txt" in entries
    assert "top/ünïcødé/設定.conf" in entries
    assert entries["top/long-link"]["link"] == "x" * 150
    assert entries["top/secret"]["mode"] == 0o400
    assert entries["top/fifo"]["type"] == "other"


def test_scan_stream_reads_any_binary_stream_to_the_end(tmp_path):
    data = build_archive(tarfile.GNU_FORMAT)
    path = tmp_path / "a.tar"
    path.write_bytes(data + bytes(10240))  # record padding after the end blocks is fine
    with open(path, "rb") as f:
        assert scan_stream(f, chunk_size=1000) == tarfile_listing(data)


def test_memoryview_and_bytearray_chunks_are_accepted():
    data = build_archive(tarfile.PAX_FORMAT)
    scanner = TarScanner()
    half = len(data) // 2
    scanner.feed(memoryview(data)[:half])
    scanner.feed(bytearray(data[half:]))
    assert scanner.close() == tarfile_listing(data)


def _end_of_members(data: bytes) -> int:
    """Offset of the first end-of-archive block."""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tf:
        tf.getmembers()
        return tf.offset


@pytest.mark.parametrize(
    "cut, message",
    [
        (lambda d, end: end - 700, "ends inside"),  # inside the last member's content or header
        (lambda d, end: 1000, "ends inside"),  # inside an early member
        (lambda d, end: 100, "inside a header block"),
        (lambda d, end: end, "without the end-of-archive blocks"),
        (lambda d, end: end + 512, "one of the two end-of-archive blocks"),
        (lambda d, end: 0, "without the end-of-archive blocks"),
    ],
    ids=["last-member", "early-member", "header", "no-end-blocks", "one-end-block", "empty"],
)
def test_truncated_stream_is_refused_with_a_clear_error(cut, message):
    data = build_archive(tarfile.PAX_FORMAT)
    truncated = data[: cut(data, _end_of_members(data))]
    with pytest.raises(TarStreamError, match=message) as err:
        feed_in_chunks(truncated, 4096)
    assert "restore from another copy" in err.value.remedy


def test_corrupt_header_is_refused_at_once():
    data = bytearray(build_archive(tarfile.USTAR_FORMAT))
    data[512 + 3] ^= 0xFF  # a byte of the second header's name; the checksum no longer fits
    scanner = TarScanner()
    with pytest.raises(TarStreamError, match="bad checksum"):
        scanner.feed(bytes(data))


def test_garbage_is_not_a_tar_stream():
    with pytest.raises(TarStreamError):
        feed_in_chunks(os.urandom(4096), 512)


def test_huge_extended_header_size_is_refused_before_allocating():
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        _add(tf, "x", type=tarfile.XHDTYPE)
    header = bytearray(buf.getvalue()[:512])
    header[124:136] = b"%011o\0" % (1 << 32)
    header[148:156] = b"        "
    header[148:156] = b"%06o\0 " % sum(header)
    with pytest.raises(TarStreamError, match="exceeds"):
        TarScanner().feed(bytes(header))


def test_file_content_changes_the_hash_only_of_that_file():
    data = bytearray(build_archive(tarfile.GNU_FORMAT))
    before = {e["path"]: e.get("sha256") for e in feed_in_chunks(bytes(data), 65536)}
    offset = data.index(b"#!/bin/sh")
    data[offset] ^= 1
    after = {e["path"]: e.get("sha256") for e in feed_in_chunks(bytes(data), 65536)}
    assert [p for p in before if before[p] != after[p]] == ["top/run.sh"]


def test_memory_stays_flat_while_a_large_file_passes():
    size = 48 << 20
    info = tarfile.TarInfo("big.bin")
    info.size = size
    chunk = bytes(1 << 20)
    scanner = TarScanner()
    tracemalloc.start()
    try:
        scanner.feed(info.tobuf(format=tarfile.PAX_FORMAT))
        for _ in range(size // len(chunk)):
            scanner.feed(chunk)
        scanner.feed(bytes(1024))
        entries = scanner.close()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert entries[0]["sha256"] == hashlib.sha256(bytes(size)).hexdigest()
    assert peak < 256 << 10  # no copy of any chunk, let alone of the file


def test_random_corruption_gives_a_listing_or_a_tar_stream_error_never_a_crash():
    data = build_archive(tarfile.PAX_FORMAT)
    rng = random.Random(7)
    outcomes = set()
    for _ in range(300):
        broken = bytearray(data)
        for _ in range(rng.randint(1, 3)):
            broken[rng.randrange(len(broken))] = rng.randrange(256)
        try:
            feed_in_chunks(bytes(broken), rng.choice([1000, 4096, 65536]))
            outcomes.add("listed")  # content bytes changed: only hashes differ
        except TarStreamError:
            outcomes.add("refused")
    assert outcomes == {"listed", "refused"}


def test_malformed_pax_records_are_refused():
    for bad in (b"12 path=abc\nxx", b"99 a=b\n", b"5 ab\n", b"-1 a=b\n", b"3 \n"):
        with pytest.raises(TarStreamError, match="malformed pax"):
            parse_pax_records(bad)
    assert parse_pax_records(b"12 path=abc\n13 mtime=1.5\n5 a=\n\0\0") == {"path": "abc", "mtime": "1.5"}
