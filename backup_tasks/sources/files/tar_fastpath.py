"""GNU tar's common member shapes, decoded in a handful of C calls; anything else is the full parser's.

Why: the files pipeline scans every archive twice (in the dump and in verify), and the
full parser (tar_headers.py, driven by tarstream.py) spent about 20 µs a member on a tree
of small files besides reading and hashing, mostly in Python-level work per header field
and in ``sum()`` over each 512-byte block for its checksum; this takes about 6 µs. GNU tar, as the dump runs it (``--format=pax``, atime and
ctime deleted), writes nearly every member in one of two shapes:

- a pax extended header (typeflag ``x``) whose records are ``mtime`` alone, or ``path``
  then ``mtime`` (a name over 100 bytes or not ASCII), followed by the member's ustar
  header;
- a plain ustar header (an mtime without a fraction of a second needs no pax header).

``common_member`` recognises those shapes for regular files and directories, and only
when every field is written the way GNU tar writes it: numbers as zero-padded octal
digits with their NUL, an empty ustar prefix, a pax header of nothing but those records.
Each header's checksum is checked. Whatever else comes (symlinks, hard links, devices,
sparse files, GNU long names, global headers, other pax keywords, a header split across
chunks, a checksum that does not add up) gives None, and the caller hands the same bytes
to the full parser, which reads or refuses them exactly as before. Every shape accepted
here decodes to what the full parser would give for the same bytes (the tests compare both).

The commonest of them (a file or directory with a sub-second mtime: the pax header holds
the one ``mtime`` record) is tried first by two short matches at fixed places, its two
checksums each taken by one Adler-32 call when the block is ASCII (its byte sum is then
below Adler's modulus, so exact): 4.7 µs a member instead of 5.7 (best of 15, loaded
machine). Whatever that way does not settle takes the general way below, unchanged.
"""

from __future__ import annotations

import re
from zlib import adler32

BLOCK = 512

#: a pax extended header block (size and checksum fields as GNU tar writes them, typeflag ``x``)
#: and its records: ``path`` (optional), then ``mtime``; their lengths are checked after
_PAX = re.compile(
    rb".{124}([0-7]{11})\0.{12}([0-7]{6})\0 x.{355}(?:(\d+) path=([^\n]+)\n)?(\d+) mtime=(\d+(?:\.\d+)?)\n", re.S
)
#: a ustar header of a regular file or a directory: name, mode, uid and gid (not read), size,
#: mtime, checksum, typeflag, linkname to devminor (not read), and a prefix that starts with
#: NUL (empty)
_USTAR = re.compile(rb"(.{100})([0-7]{7})\0.{16}([0-7]{11})\0([0-7]{11})\0([0-7]{6})\0 ([05]).{188}\0", re.S)
#: the commonest pax header: the one record ``mtime`` (a block of records follows the header block;
#: the caller checks that the record's length and the header's size field both say where it ends)
_MTIME_PAX = re.compile(rb".{124}([0-7]{11})\0.{12}([0-7]{6})\0 x.{355}(\d+) mtime=(\d+(?:\.\d+)?)\n", re.S)
_DIR = 0x35  # b"5"
#: the longest pax header read here (a path is at most 4096 bytes); longer ones, up to the full
#: parser's own bound, are the full parser's to read or refuse
_LONGEST_PAX = 16 * BLOCK

#: ``common_member``'s answer, the member as the full parser would list it: path, kind ("file" or
#: "dir"), size (0 for a directory), permission bits, mtime, its pax records (what a sink hears),
#: and the offset in the view where its content (or the next header) starts. A tuple, not a
#: NamedTuple: making one of those cost more than a tenth of the whole decoding.
Member = tuple[str, str, int, int, float, dict[str, str], int]


def _sum_ok(raw: bytes, at: int, stored: bytes) -> bool:
    """Whether the header at ``raw[at:at + 512]`` has the checksum ``stored`` (six octal digits, NUL, space).

    The checksum is the byte sum with its own field counted as eight spaces. Each half
    block sums to at most 256 * 255 < 65521, so the low half of an Adler-32 started at 0
    is that half's exact byte sum: two C calls instead of ``sum()`` over 512 ints. The
    field's own bytes are the six digits, a NUL and a space (32), replaced by 8 * 32.
    """
    total = (adler32(raw[at : at + 256], 0) & 0xFFFF) + (adler32(raw[at + 256 : at + BLOCK], 0) & 0xFFFF)
    return total - sum(stored) + 224 == int(stored, 8)


def common_member(view: memoryview, pos: int) -> Member | None:
    """The member whose headers start at ``view[pos]`` if it has a common shape and its headers are in ``view``; else None.

    None is no verdict: the full parser reads the same bytes and decides.
    """
    raw = view[pos : pos + 3 * BLOCK].tobytes()
    m = _MTIME_PAX.match(raw)
    if m is not None:  # the commonest shape, the shortest way; anything it does not settle goes the longer way
        pax_size, pax_sum, record_len, mtime_text = m.groups()
        size = int(pax_size, 8)
        u = _USTAR.match(raw, 2 * BLOCK) if m.end() == BLOCK + size == BLOCK + int(record_len) <= 2 * BLOCK else None
        if u is not None:
            name, mode, size_field, _, ustar_sum, kind = u.groups()
            head, ustar = raw[:BLOCK], raw[2 * BLOCK :]
            # An ASCII block sums to at most 512 * 127 < 65521: the low half of one Adler-32 is its exact byte sum.
            if (head.isascii() and ustar.isascii()
                    and (adler32(head, 0) & 0xFFFF) + 224 - sum(pax_sum) == int(pax_sum, 8)
                    and (adler32(ustar, 0) & 0xFFFF) + 224 - sum(ustar_sum) == int(ustar_sum, 8)):
                text = mtime_text.decode()
                path = name.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
                if kind == b"5":
                    return path.rstrip("/"), "dir", 0, int(mode, 8) & 0o7777, float(text), {"mtime": text}, pos + 3 * BLOCK
                return path, "file", int(size_field, 8), int(mode, 8) & 0o7777, float(text), {"mtime": text}, pos + 3 * BLOCK
    if len(raw) < BLOCK:
        return None
    at, pax = 0, {}
    if raw[156] == 0x78:  # b"x": a pax header first
        try:
            size = int(raw[124:135], 8)  # the regex below checks this field's form
        except ValueError:
            return None
        at = BLOCK + ((size + BLOCK - 1) & -BLOCK)
        if at + BLOCK > len(raw):  # a long path, or the chunk ends: exactly what is needed, if in view
            if size > _LONGEST_PAX or pos + at + BLOCK > len(view):
                return None
            raw = view[pos : pos + at + BLOCK].tobytes()
        m = _PAX.fullmatch(raw, 0, BLOCK + size)
        if m is None:
            return None
        _, stored, path_len, path, mtime_len, mtime_text = m.groups()
        records = m.start(5)
        if int(mtime_len) != BLOCK + size - records or not _sum_ok(raw, 0, stored):
            return None
        if path is None:
            pax = {"mtime": mtime_text.decode()}
        elif int(path_len) == records - BLOCK:
            pax = {"path": path.decode("utf-8", "surrogateescape"), "mtime": mtime_text.decode()}
        else:
            return None
    m = _USTAR.match(raw, at)
    if m is None:
        return None
    name, mode, size_field, mtime, stored, kind = m.groups()
    if not _sum_ok(raw, at, stored):
        return None
    mode, mtime = int(mode, 8) & 0o7777, float(pax["mtime"] if pax else int(mtime, 8))  # a pax header has mtime
    if kind[0] == _DIR:  # the full parser strips a ustar name's slashes, and a pax path's unless nothing is left
        if "path" in pax:
            path = pax["path"].rstrip("/") or pax["path"]
        else:
            path = name.split(b"\0", 1)[0].decode("utf-8", "surrogateescape").rstrip("/")
        return path, "dir", 0, mode, mtime, pax, pos + at + BLOCK
    path = pax["path"] if "path" in pax else name.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
    return path, "file", int(size_field, 8), mode, mtime, pax, pos + at + BLOCK
