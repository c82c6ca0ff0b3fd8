"""One tar header block, or one pax extended header, decoded in full: the reference parser.

``tarstream.TarScanner`` drives these for every member that ``tar_fastpath`` does not
recognise (and the tests compare the two on every shape). Decoding follows Python's
``tarfile`` (V7 directories, the ustar prefix, GNU base-256 numbers, signed checksums,
pax records whose empty value deletes a keyword) but reads only the six fields the
listing needs: ``tarfile.TarInfo.frombuf`` decoded every field and was two thirds of the
scanning time.
"""

from __future__ import annotations

import tarfile
from typing import NamedTuple

from backup_tasks.errors import PermanentError

BLOCK = 512
#: Largest pax or GNU long-name header accepted. Real ones are a few KiB (PATH_MAX is
#: 4096); the bound keeps a corrupt size field from turning into a huge allocation.
MAX_META_BYTES = 8 << 20

ZERO_BLOCK = bytes(BLOCK)
PAX_TYPES = (tarfile.XHDTYPE, tarfile.SOLARIS_XHDTYPE)
META_TYPES = (*PAX_TYPES, tarfile.XGLTYPE, tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK)
TYPE_NAMES = {
    tarfile.REGTYPE: "file",
    tarfile.AREGTYPE: "file",
    tarfile.CONTTYPE: "file",
    tarfile.DIRTYPE: "dir",
    tarfile.SYMTYPE: "symlink",
    tarfile.LNKTYPE: "hardlink",
}
SPARSE_KEYS = ("GNU.sparse.major", "GNU.sparse.map", "GNU.sparse.size", "GNU.sparse.numblocks")
_REMEDY = "the stream is truncated or is not a tar archive; restore from another copy or run a new backup"


class TarStreamError(PermanentError):
    """The bytes are not a complete, well-formed tar archive."""

    def __init__(self, message: str, remedy: str = _REMEDY) -> None:
        super().__init__(message, remedy)


class Header(NamedTuple):
    type: bytes
    name: str
    linkname: str
    mode: int
    size: int
    mtime: int


def _number(field: bytes) -> int:
    """A numeric header field: NUL/space-terminated octal, or GNU base-256."""
    if field[0] & 0x80:  # 0o200 positive, 0o377 negative, as tarfile.nti reads them
        value = int.from_bytes(field[1:], "big")
        return value - 256 ** (len(field) - 1) if field[0] == 0xFF else value
    digits = field.split(b"\0", 1)[0].strip()
    try:
        return int(digits, 8) if digits else 0
    except ValueError:
        raise TarStreamError(f"invalid number {field!r} in tar header") from None


def _checksum_ok(block: bytes) -> bool:
    # The chksum field counts as eight spaces (8 * 32 = 256). Some old tars summed
    # signed chars, so accept that variant too, as tarfile does.
    stored = _number(block[148:156])
    unsigned = 256 + sum(block) - sum(block[148:156])
    if stored == unsigned:
        return True
    high = sum(1 for b in block[:148] + block[156:] if b & 0x80)
    return stored == unsigned - 256 * high


def parse_header(block: bytes) -> Header:
    """Decode the fields of one 512-byte header block that the listing needs.

    Gives the same results as ``tarfile.TarInfo.frombuf`` (V7 directories, ustar
    prefix, trailing-slash removal) but only decodes six fields: frombuf decoded
    all of them and was two thirds of the scanning time.
    """
    if not _checksum_ok(block):
        raise TarStreamError("bad checksum")
    kind = block[156:157]
    if kind in META_TYPES:  # half of GNU tar's pax headers; only their size matters
        return Header(type=kind, name="", linkname="", mode=0, size=_number(block[124:136]), mtime=0)
    name = text(block[:100].split(b"\0", 1)[0])
    if kind == tarfile.AREGTYPE and name.endswith("/"):
        kind = tarfile.DIRTYPE
    if kind == tarfile.DIRTYPE:
        name = name.rstrip("/")
    prefix = block[345:500].split(b"\0", 1)[0]
    if prefix and kind not in tarfile.GNU_TYPES:
        name = text(prefix) + "/" + name
    return Header(
        type=kind,
        name=name,
        linkname=text(block[157:257].split(b"\0", 1)[0]),
        mode=_number(block[100:108]),
        size=_number(block[124:136]),
        mtime=_number(block[136:148]),
    )


def carries_data(member_type: bytes) -> bool:
    """Whether ``size`` bytes of content follow the header; the same rule as tarfile's."""
    return member_type in tarfile.REGULAR_TYPES or member_type not in tarfile.SUPPORTED_TYPES


def text(raw: bytes) -> str:
    # Paths are bytes on POSIX; surrogateescape keeps non-UTF-8 names round-trippable
    # (os.fsencode gives the original bytes back), as tarfile does.
    return raw.decode("utf-8", "surrogateescape")


def parse_pax_records(buf: bytes, offset: int = 0) -> dict[str, str]:
    """Parse pax extended-header records (``"%d %s=%s\\n"``, length includes itself).

    An empty value deletes the keyword (POSIX), so it is left out of the result.
    """
    records: dict[str, str] = {}
    pos, end = 0, len(buf)
    while pos < end:
        if buf[pos] == 0:  # NUL padding after the last record
            break
        space = buf.find(b" ", pos, min(end, pos + 20))
        digits = buf[pos:space] if space > pos else b""
        length = int(digits) if digits.isdigit() else 0
        stop = pos + length
        if length <= len(digits) + 1 or stop > end or buf[stop - 1] != 0x0A:
            raise TarStreamError(f"malformed pax extended header at byte {offset}")
        key, eq, value = buf[space + 1 : stop - 1].partition(b"=")
        if not eq:
            raise TarStreamError(f"malformed pax record {key[:40]!r} at byte {offset}")
        if value:
            records[text(key)] = text(value)
        else:
            records.pop(text(key), None)
        pos = stop
    return records
