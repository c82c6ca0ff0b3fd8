"""Read a tar byte stream once, as it passes, and list every member with its sha256.

The files pipeline writes GNU tar's output to the next stage and, in the same pass,
needs the file list with content hashes for the manifest; verification later needs
the same list from the stored bytes. Neither may re-read the source files or hold
the archive in memory, so this is a push parser: the caller feeds chunks of any size
(``TarScanner.feed``) and collects the listing at the end (``TarScanner.close``).

Memory stays flat in the size of the data: file contents only pass through
``hashlib``; what grows is the listing (one dict per member) and, bounded by
``MAX_META_BYTES``, the pax or GNU long-name header being assembled.

Understood: ustar (with the ``prefix`` field), pax per-file extended headers
(``path``, ``linkpath``, ``size``, ``mtime`` with sub-second precision), pax global
headers (skipped), GNU long names and long link targets (``L``/``K``). Which
members carry data follows Python's ``tarfile`` exactly, so both agree on every
archive. Sparse members are refused rather than hashed wrongly; backup-tasks never
writes them (GNU tar stores sparse files in full without ``--sparse``).

Measured here (2 cores, 1 MiB chunks): 1.4 GB/s on large files, where sha256 is the
limit, and about 500 MB/s on a 469 MB stream of 28.7k mixed-size members, where the
cost is some 20 µs per member (two headers each, since GNU tar writes a pax header for
every sub-second mtime). Headers are decoded here rather than by
``tarfile.TarInfo.frombuf``, which decoded every field and took two thirds of the time.

An entry is ``{"path", "type", "size", "mode", "mtime"}`` plus ``"sha256"`` for
regular files and ``"link"`` for symbolic and hard links. ``type`` is one of
``file``, ``dir``, ``symlink``, ``hardlink``, ``other`` (devices, fifos, unknown
types). ``mode`` is the permission bits (``st_mode & 0o7777``).
"""

from __future__ import annotations

import hashlib
import tarfile
from typing import BinaryIO, Callable, NamedTuple, Protocol

from backup_tasks.defaults import CHUNK_SIZE
from backup_tasks.errors import PermanentError

BLOCK = 512
#: Largest pax or GNU long-name header accepted. Real ones are a few KiB (PATH_MAX is
#: 4096); the bound keeps a corrupt size field from turning into a huge allocation.
MAX_META_BYTES = 8 << 20

_ZERO_BLOCK = bytes(BLOCK)
_PAX_TYPES = (tarfile.XHDTYPE, tarfile.SOLARIS_XHDTYPE)
_META_TYPES = (*_PAX_TYPES, tarfile.XGLTYPE, tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK)
_TYPE_NAMES = {
    tarfile.REGTYPE: "file",
    tarfile.AREGTYPE: "file",
    tarfile.CONTTYPE: "file",
    tarfile.DIRTYPE: "dir",
    tarfile.SYMTYPE: "symlink",
    tarfile.LNKTYPE: "hardlink",
}
_SPARSE_KEYS = ("GNU.sparse.major", "GNU.sparse.map", "GNU.sparse.size", "GNU.sparse.numblocks")
_REMEDY = "the stream is truncated or is not a tar archive; restore from another copy or run a new backup"


class TarStreamError(PermanentError):
    """The bytes are not a complete, well-formed tar archive."""

    def __init__(self, message: str, remedy: str = _REMEDY) -> None:
        super().__init__(message, remedy)


class MemberSink(Protocol):
    """What hears a member's content as it passes (the restore writes it); any exception stops the scan."""

    def begin(self, entry: dict, pax: dict[str, str]) -> None:
        """A member starts; ``entry`` lacks its sha256 yet, ``pax`` holds its extended header records."""

    def data(self, chunk: memoryview) -> None:
        """Content of the regular file begun last (a view valid only during the call)."""

    def end(self, entry: dict) -> None:
        """The member's content has passed; ``entry`` is complete, before ``on_entry`` hears it."""


class _Header(NamedTuple):
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


def parse_header(block: bytes) -> _Header:
    """Decode the fields of one 512-byte header block that the listing needs.

    Gives the same results as ``tarfile.TarInfo.frombuf`` (V7 directories, ustar
    prefix, trailing-slash removal) but only decodes six fields: frombuf decoded
    all of them and was two thirds of the scanning time.
    """
    if not _checksum_ok(block):
        raise TarStreamError("bad checksum")
    kind = block[156:157]
    if kind in _META_TYPES:  # half of GNU tar's pax headers; only their size matters
        return _Header(type=kind, name="", linkname="", mode=0, size=_number(block[124:136]), mtime=0)
    name = _text(block[:100].split(b"\0", 1)[0])
    if kind == tarfile.AREGTYPE and name.endswith("/"):
        kind = tarfile.DIRTYPE
    if kind == tarfile.DIRTYPE:
        name = name.rstrip("/")
    prefix = block[345:500].split(b"\0", 1)[0]
    if prefix and kind not in tarfile.GNU_TYPES:
        name = _text(prefix) + "/" + name
    return _Header(
        type=kind,
        name=name,
        linkname=_text(block[157:257].split(b"\0", 1)[0]),
        mode=_number(block[100:108]),
        size=_number(block[124:136]),
        mtime=_number(block[136:148]),
    )


def _carries_data(member_type: bytes) -> bool:
    """Whether ``size`` bytes of content follow the header; the same rule as tarfile's."""
    return member_type in tarfile.REGULAR_TYPES or member_type not in tarfile.SUPPORTED_TYPES


def _text(raw: bytes) -> str:
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
            records[_text(key)] = _text(value)
        else:
            records.pop(_text(key), None)
        pos = stop
    return records


class TarScanner:
    """Push parser: ``feed()`` chunks of a tar stream, then ``close()`` for the listing.

    Raises TarStreamError as soon as a header is invalid, and from ``close()`` when the
    stream stopped early or lacks the two zero blocks that end an archive.

    With ``on_entry``, each member's entry (its sha256 included) goes to that callback as
    soon as its content has passed, and none is kept: a caller that compares as it reads
    then holds one entry, whatever the number of members. With ``sink``, each member's
    start, content and end go there too, so one parse of the stream also restores it.
    """

    def __init__(self, on_entry: Callable[[dict], None] | None = None, sink: MemberSink | None = None) -> None:
        self.entries: list[dict] = []
        self._on_entry = on_entry
        self._sink = sink
        self.bytes_fed = 0
        self._header = bytearray()  # a header block split across chunks
        self._left = 0  # content bytes of the current member still to come
        self._pad = 0  # padding bytes after them
        self._hash = None  # sha256 of the regular file being read
        self._meta: bytearray | None = None  # pax or GNU long-name header being read
        self._meta_type = b""
        self._member: dict | None = None  # the entry whose content is passing
        self._pending: dict[str, str] = {}  # pax and GNU long names for the next member
        self._zeros = 0
        self._member_offset = 0
        self._done = False

    # -- feeding -------------------------------------------------------------------------

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Consume the next chunk. Chunks may split headers and contents anywhere."""
        view = memoryview(data).cast("B")
        pos, end = 0, len(view)
        while pos < end and not self._done:
            if self._left or self._pad:
                pos = self._consume_content(view, pos, end)
            else:
                pos = self._consume_header(view, pos, end)
        self.bytes_fed += end  # bytes after the end-of-archive blocks are record padding

    def feed_to_end(self, data: bytes | bytearray | memoryview) -> int:
        """Consume the last bytes of one archive of several being joined, up to its end-of-archive blocks.

        Returns how many bytes of ``data`` belong to members; what follows (the zero
        blocks and record padding) is the caller's to drop, and the next archive's
        members continue this listing. ``data`` must start where a header or member
        content may start (a multiple of 512 bytes into the archive). TarStreamError
        when ``data`` ends before the end-of-archive block.
        """
        view = memoryview(data).cast("B")
        pos, end = 0, len(view)
        while pos < end:
            if self._left or self._pad:
                pos = self._consume_content(view, pos, end)
            elif view[pos : pos + BLOCK] == _ZERO_BLOCK:
                self.bytes_fed += pos
                return pos
            else:
                pos = self._consume_header(view, pos, end)
        self.bytes_fed += pos
        raise TarStreamError(f"a joined tar stream part ends without its end-of-archive block after {self.bytes_fed} bytes")

    def _consume_content(self, view: memoryview, pos: int, end: int) -> int:
        if self._left:
            take = min(self._left, end - pos)
            if self._hash is not None:
                self._hash.update(view[pos : pos + take])
                if self._sink is not None:
                    self._sink.data(view[pos : pos + take])
            elif self._meta is not None:
                self._meta += view[pos : pos + take]
            self._left -= take
            pos += take
            if self._left:
                return pos
            self._finish_member()
        take = min(self._pad, end - pos)
        self._pad -= take
        return pos + take

    def _consume_header(self, view: memoryview, pos: int, end: int) -> int:
        if not self._header and end - pos >= BLOCK:
            block = view[pos : pos + BLOCK].tobytes()
            pos += BLOCK
        else:
            take = min(BLOCK - len(self._header), end - pos)
            self._header += view[pos : pos + take]
            pos += take
            if len(self._header) < BLOCK:
                return pos
            block, self._header = bytes(self._header), bytearray()
        self._member_offset = self.bytes_fed + pos - BLOCK
        self._on_header(block)
        return pos

    # -- headers -------------------------------------------------------------------------

    def _on_header(self, block: bytes) -> None:
        if block == _ZERO_BLOCK:
            self._zeros += 1
            self._done = self._zeros == 2
            return
        if self._zeros:
            raise TarStreamError(f"lone zero block before byte {self._member_offset}: the archive is corrupt")
        try:
            info = parse_header(block)
        except TarStreamError as exc:
            raise TarStreamError(f"invalid tar header at byte {self._member_offset}: {exc.message}") from None
        if info.type in _META_TYPES:
            self._start_meta(info)
        else:
            self._start_member(info)

    def _start_meta(self, info: _Header) -> None:
        if info.size > MAX_META_BYTES:
            raise TarStreamError(
                f"extended header of {info.size} bytes at byte {self._member_offset} exceeds {MAX_META_BYTES}"
            )
        self._meta, self._meta_type = bytearray(), info.type
        self._expect(info.size)

    def _start_member(self, info: _Header) -> None:
        pending, self._pending = self._pending, {}
        if info.type == tarfile.GNUTYPE_SPARSE or any(k in pending for k in _SPARSE_KEYS):
            raise TarStreamError(f"sparse member at byte {self._member_offset} is not supported")
        kind = _TYPE_NAMES.get(info.type, "other")
        size = int(pending["size"]) if "size" in pending else info.size
        path = pending.get("path") or pending.get("gnu.longname") or info.name
        if kind == "dir":
            path = path.rstrip("/") or path
        entry = {
            "path": path,
            "type": kind,
            "size": size if _carries_data(info.type) else 0,
            "mode": info.mode & 0o7777,
            "mtime": float(pending["mtime"]) if "mtime" in pending else float(info.mtime),
        }
        if kind in ("symlink", "hardlink"):
            entry["link"] = pending.get("linkpath") or pending.get("gnu.longlink") or info.linkname
        if self._on_entry is None:
            self.entries.append(entry)
        self._member = entry
        self._hash = hashlib.sha256() if kind == "file" else None
        if self._sink is not None:
            self._sink.begin(entry, pending)
        self._expect(entry["size"])

    def _expect(self, size: int) -> None:
        if size < 0:
            raise TarStreamError(f"negative member size in the header at byte {self._member_offset}")
        self._left = size
        self._pad = -size % BLOCK
        if not size:
            self._finish_member()

    def _finish_member(self) -> None:
        if self._meta is not None:
            meta, self._meta = bytes(self._meta), None
            self._apply_meta(self._meta_type, meta)
        else:
            if self._hash is not None:
                self._member["sha256"] = self._hash.hexdigest()
                self._hash = None
            if self._sink is not None:
                self._sink.end(self._member)
            if self._on_entry is not None:
                self._on_entry(self._member)
        self._member = None

    def _apply_meta(self, meta_type: bytes, data: bytes) -> None:
        if meta_type in _PAX_TYPES:
            try:
                records = parse_pax_records(data, self._member_offset)
                if "size" in records:
                    int(records["size"])
                if "mtime" in records:
                    float(records["mtime"])
            except ValueError:
                raise TarStreamError(f"malformed pax size or mtime at byte {self._member_offset}") from None
            self._pending.update(records)
        elif meta_type == tarfile.GNUTYPE_LONGNAME:
            self._pending["gnu.longname"] = _text(data.split(b"\0", 1)[0])
        elif meta_type == tarfile.GNUTYPE_LONGLINK:
            self._pending["gnu.longlink"] = _text(data.split(b"\0", 1)[0])
        # XGLTYPE (pax global header): deliberately ignored; GNU tar and tarfile do not
        # write one unless asked, and its keywords would not change the listing we need.

    # -- end -----------------------------------------------------------------------------

    def close(self) -> list[dict]:
        """Return the listing; raise TarStreamError if the archive did not end properly."""
        if self._done:
            return self.entries
        if self._left or self._pad:
            what = self._member["path"] if self._member else "an extended header"
            raise TarStreamError(
                f"tar stream ends inside {what!r} after {self.bytes_fed} bytes "
                f"({self._left + self._pad} more bytes expected)"
            )
        if self._header:
            raise TarStreamError(f"tar stream ends inside a header block after {self.bytes_fed} bytes")
        if self._zeros == 1:
            raise TarStreamError(f"tar stream ends after one of the two end-of-archive blocks ({self.bytes_fed} bytes)")
        raise TarStreamError(f"tar stream ends without the end-of-archive blocks after {self.bytes_fed} bytes")


def scan_stream(stream: BinaryIO, chunk_size: int = CHUNK_SIZE, on_entry: Callable[[dict], None] | None = None) -> list[dict]:
    """Read ``stream`` to its end in ``chunk_size`` pieces and return its tar listing (empty with ``on_entry``)."""
    scanner = TarScanner(on_entry)
    while chunk := stream.read(chunk_size):
        scanner.feed(chunk)
    return scanner.close()
