"""The fast path for GNU tar's common members lists what the full parser lists, and gives way on everything else.

Every archive here is written by GNU tar, the way the dump runs it, from a real tree
holding each shape a files target meets: small and empty files, whole-second and
sub-second mtimes, long and very long names, UTF-8 and non-UTF-8 names, symlinks, hard
links, a fifo, empty directories. The scanner's listing (fast path on) must equal the
full parser's (fast path off) and Python's tarfile's, in any chunking; each shape must
go the way it should (common members fast, the rest to the full parser); and broken
or unusual bytes must get the full parser's verdict, word for word.
"""

from __future__ import annotations

import io
import os
import random
import subprocess
import tarfile
from pathlib import Path

import pytest
from test_tarstream import tarfile_listing

from backup_tasks.sources.files.extract import extract
from backup_tasks.sources.files.tar_fastpath import common_member
from backup_tasks.sources.files.tarstream import TarScanner, TarStreamError

WHOLE_SECOND = 1_700_000_000


class FullParserOnly(TarScanner):
    """The scanner with the fast path turned off: the reference the fast path must agree with."""

    def _consume_common(self, view: memoryview, pos: int, end: int) -> int:
        return pos


def make_tree(root: Path, fifo: bool = True) -> Path:
    """A tree with every member shape the dump meets (a fifo unless told not: a restore refuses it)."""
    top = root / "tree"
    (top / "empty-dir").mkdir(parents=True)
    for size in (0, 1, 511, 512, 513, 4096, 200_000):
        (top / f"size-{size}").write_bytes(random.Random(size).randbytes(size))
    whole = top / "whole-second"  # no fraction of a second: GNU tar writes no pax header for it
    whole.write_bytes(b"plain ustar\n")
    os.utime(whole, (WHOLE_SECOND, WHOLE_SECOND))
    long_dir = top / ("l" * 90) / ("m" * 90)  # names over 100 bytes: a pax path record
    long_dir.mkdir(parents=True)
    (long_dir / "long-name.txt").write_bytes(b"long\n")
    very_long = top.joinpath(*(c * 200 for c in "pqr"))  # a path record that fills a second block
    very_long.mkdir(parents=True)
    (very_long / "deep.txt").write_bytes(b"deep\n")
    (top / "設定.conf").write_bytes(b"utf-8 name\n")
    (top / os.fsdecode(b"latin-\xe9t\xe9.bin")).write_bytes(b"not utf-8\n")
    (top / "link").symlink_to("size-1")
    (top / "long-link").symlink_to("x" * 150)
    os.link(top / "size-4096", top / "z-hard")  # after size-4096 in name order: the link member
    if fifo:
        os.mkfifo(top / "fifo")
    (top / "0500-dir").mkdir(mode=0o500)
    return top


def gnu_tar(root: Path, *extra: str) -> bytes:
    """The archive of ``root/tree`` with the dump's options (gnu_tar.py), in name order."""
    return subprocess.run(
        ["tar", "-c", "-f", "-", "--format=pax", "--numeric-owner", "--pax-option=delete=atime,delete=ctime",
         "--sort=name", *extra, "-C", str(root), "tree"],
        check=True, capture_output=True,
    ).stdout


def scan(data: bytes, chunk: int, scanner_class: type[TarScanner] = TarScanner) -> list[dict]:
    scanner = scanner_class()
    for start in range(0, len(data), chunk):
        scanner.feed(data[start : start + chunk])
    return scanner.close()


def outcome(data: bytes, chunk: int, scanner_class: type[TarScanner]) -> object:
    try:
        return scan(data, chunk, scanner_class)
    except TarStreamError as exc:
        return exc.message


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> bytes:
    root = tmp_path_factory.mktemp("fastpath")
    make_tree(root)
    return gnu_tar(root)


@pytest.mark.parametrize("chunk", [1, 511, 512, 1536, 4097, 65536, 1 << 20])
def test_fast_path_lists_what_the_full_parser_and_tarfile_list(archive, chunk):
    expected = tarfile_listing(archive)
    assert scan(archive, chunk) == expected
    assert scan(archive, chunk, FullParserOnly) == expected


def test_common_shapes_take_the_fast_path_and_the_rest_give_way(archive):
    taken, given_way = set(), set()
    view = memoryview(archive)
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:") as tf:
        for member in tf:  # offset: where the member's first header (its pax header, if any) starts
            fast = common_member(view, member.offset)
            (taken if fast else given_way).add(member.name.rsplit("/", 1)[-1])
            if fast:
                path, kind, size, mode, mtime, pax, content = fast
                assert (path, size, mode, mtime) == (member.name, member.size if member.isreg() else 0, member.mode,
                                                     float(member.mtime))
                assert content == member.offset_data
                assert (kind == "dir") == member.isdir()
    assert given_way == {"link", "long-link", "z-hard", "fifo"}
    assert {"size-0", "size-200000", "whole-second", "long-name.txt", "deep.txt", "設定.conf",
            os.fsdecode(b"latin-\xe9t\xe9.bin"), "empty-dir", "0500-dir", "l" * 90, "r" * 200} <= taken


def test_a_member_whose_headers_the_chunk_cuts_gives_way(archive):
    view = memoryview(archive)
    assert common_member(view[:1023], 0) is None  # the pax header's member header is not in view yet
    assert common_member(view[:100], 0) is None
    assert common_member(view[:1536], 0) is not None


def test_restore_through_the_fast_path_keeps_content_modes_and_nanosecond_mtimes(tmp_path):
    src = tmp_path / "src"
    top = make_tree(src, fifo=False)
    data = gnu_tar(src)
    (tmp_path / "dest").mkdir()
    counts, listing = extract(io.BytesIO(data), str(tmp_path / "dest"))
    assert listing == tarfile_listing(data)
    for name in ("size-200000", "whole-second", "設定.conf", os.fsdecode(b"latin-\xe9t\xe9.bin")):
        here, there = top / name, tmp_path / "dest" / "tree" / name
        assert there.read_bytes() == here.read_bytes()
        assert there.stat().st_mtime_ns == here.stat().st_mtime_ns
        assert there.stat().st_mode == here.stat().st_mode
    assert (tmp_path / "dest" / "tree" / "0500-dir").stat().st_mode & 0o777 == 0o500
    assert counts["files"] >= 12


def test_sparse_member_is_still_refused(tmp_path):
    top = make_tree(tmp_path)
    with open(top / "sparse.img", "wb") as f:
        f.truncate(4 << 20)
        f.write(b"head")
    data = gnu_tar(tmp_path, "--sparse")
    with pytest.raises(TarStreamError, match=r"sparse member at byte \d+ is not supported"):
        scan(data, 65536)
    assert outcome(data, 65536, TarScanner) == outcome(data, 65536, FullParserOnly)


def _header_offsets(data: bytes) -> list[int]:
    """Offsets of every header block, pax ones included."""
    offsets, pos = [], 0
    while data[pos : pos + 512] != bytes(512):
        offsets.append(pos)
        size = int(data[pos + 124 : pos + 135], 8)
        pos += 512 + (0 if data[pos + 156 : pos + 157] in b"125" else -(-size // 512) * 512)
    return offsets


def _refit_checksum(data: bytearray, at: int) -> None:
    block = data[at : at + 512]
    block[148:156] = b" " * 8
    data[at + 148 : at + 156] = b"%06o\0 " % sum(block)


@pytest.mark.parametrize("which", ["pax", "ustar"])
def test_a_bad_checksum_on_a_common_member_is_the_full_parsers_error(archive, which):
    offsets = _header_offsets(archive)
    at = next(o for o in offsets if archive[o + 156 : o + 157] == (b"x" if which == "pax" else b"0"))
    broken = bytearray(archive)
    broken[at + 40] ^= 0x01  # inside the name field: the stored checksum no longer adds up
    message = f"invalid tar header at byte {at}: bad checksum"
    for chunk in (512, 65536):
        with pytest.raises(TarStreamError) as err:
            scan(bytes(broken), chunk)
        assert err.value.message == message


def test_a_header_summed_as_signed_chars_is_read_by_the_full_parser(archive):
    # Some old tars summed signed chars; the full parser accepts that (as tarfile does),
    # the fast path does not check it and gives way. A non-ASCII name has bytes >= 0x80.
    offsets = _header_offsets(archive)
    at = next(o for o in offsets if "設定".encode() in archive[o : o + 100] and archive[o + 156] == ord("0"))
    broken = bytearray(archive)
    block = broken[at : at + 512]
    block[148:156] = b" " * 8
    signed = sum(b - 256 if b & 0x80 else b for b in block)
    assert signed != sum(block)
    broken[at + 148 : at + 156] = b"%06o\0 " % signed
    assert common_member(memoryview(broken), at) is None
    assert scan(bytes(broken), 65536) == tarfile_listing(archive)


def test_unusual_field_forms_give_way_and_read_the_same(archive):
    # Another writer's forms, which the full parser reads: a space-terminated mode, a base-256 size.
    offsets = _header_offsets(archive)
    at = next(o for o in offsets if archive[o + 156 : o + 157] == b"0" and archive[o + 124 : o + 135] == b"%011o" % 1)
    spaced = bytearray(archive)
    spaced[at + 100 : at + 108] = b"000644 \0"
    binary = bytearray(archive)
    binary[at + 124 : at + 136] = b"\x80" + (1).to_bytes(11, "big")
    for data in (spaced, binary):
        _refit_checksum(data, at)
        assert common_member(memoryview(data), at) is None
        assert scan(bytes(data), 65536) == scan(bytes(data), 65536, FullParserOnly) == tarfile_listing(bytes(data))


def test_a_pax_header_with_other_records_gives_way():
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        info = tarfile.TarInfo("commented.txt")
        info.size, info.mtime, info.pax_headers = 3, 1_700_000_000.5, {"comment": "kept aside"}
        tf.addfile(info, io.BytesIO(b"abc"))
    data = buf.getvalue()
    assert data[156:157] == b"x" and b"comment=kept aside" in data[512:1024]
    assert common_member(memoryview(data), 0) is None
    assert scan(data, 65536) == scan(data, 65536, FullParserOnly) == tarfile_listing(data)


def test_random_corruption_gets_the_full_parsers_verdict(archive):
    rng = random.Random(11)
    offsets = _header_offsets(archive)
    verdicts = set()
    for _ in range(400):
        broken = bytearray(archive)
        at = rng.choice(offsets)  # mostly headers: that is where the two parsers could part
        for _ in range(rng.randint(1, 2)):
            broken[at + rng.randrange(1024)] = rng.randrange(256)
        chunk = rng.choice([512, 4096, 65536])
        fast, full = outcome(bytes(broken), chunk, TarScanner), outcome(bytes(broken), chunk, FullParserOnly)
        assert fast == full
        verdicts.add("refused" if isinstance(full, str) else "listed")
    assert verdicts == {"listed", "refused"}


def test_junk_after_the_name_is_ignored_as_the_full_parser_ignores_it(archive):
    offsets = _header_offsets(archive)
    at = next(o for o in offsets if archive[o : o + 100].split(b"\0")[0] == b"tree/size-1")
    data = bytearray(archive)
    data[at + 60 : at + 64] = b"junk"  # after the name's NUL: not part of the name
    _refit_checksum(data, at)
    assert scan(bytes(data), 65536) == scan(bytes(data), 65536, FullParserOnly) == tarfile_listing(archive)


@pytest.mark.parametrize("record", [b"30 mtime=", b" path="])
def test_a_pax_record_whose_length_is_wrong_is_the_full_parsers_error(archive, record):
    offsets = _header_offsets(archive)
    at = next(o for o in offsets if archive[o + 156 : o + 157] == b"x" and record in archive[o + 512 : o + 1024])
    data = bytearray(archive)
    start = data.index(record, at + 512) if record[0] != 32 else at + 512
    digits = data[start : data.index(b" ", start)]
    data[start : start + len(digits)] = b"%0*d" % (len(digits), int(digits) - 1)  # one byte short: no newline there
    for chunk in (512, 65536):
        with pytest.raises(TarStreamError, match=f"malformed pax extended header at byte {at}"):
            scan(bytes(data), chunk)
        assert outcome(bytes(data), chunk, FullParserOnly) == outcome(bytes(data), chunk, TarScanner)


def test_an_oversized_pax_header_is_refused_even_when_the_whole_of_it_is_in_one_chunk():
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        info = tarfile.TarInfo("a" * (9 << 20))  # a path record longer than the full parser's bound
        info.mtime = 1_700_000_000.5
        tf.addfile(info, io.BytesIO(b""))
    data = buf.getvalue()
    assert common_member(memoryview(data), 0) is None
    with pytest.raises(TarStreamError, match="exceeds"):
        scan(data, len(data))
