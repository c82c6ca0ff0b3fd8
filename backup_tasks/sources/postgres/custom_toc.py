"""Where the table of contents of a ``pg_dump -Fc`` archive ends, so a restore can keep the TOC and skip the data.

A parallel restore builds indexes and constraints (``--section=post-data -j N``) from a
file, after the data went in through a pipe. That step reads the archive's header and
TOC and none of its data blocks, so the file only needs those bytes where they belong:
the rest can be a hole (``ftruncate``), which costs no disk space and no copying, where
writing the whole plaintext would need staging space the size of the database.

The layout follows PostgreSQL's ``pg_backup_archiver.c`` (``ReadHead``, ``ReadToc``) and
the custom format's extra TOC data (``pg_backup_custom.c``: a data offset per entry), for
archive versions 1.12 to 1.15 (PostgreSQL 9.5 to 16). Anything else, or bytes that do not
parse exactly, gives None: the caller then keeps the whole archive, as before.
"""

from __future__ import annotations

import os

MAGIC = b"PGDMP"
OLDEST = (1, 12, 0)
NEWEST = (1, 15, 0)
FORMAT_CUSTOM = 1
#: what a custom archive's data part starts with: a block of table data, or of large objects
DATA_BLOCKS = (1, 3)


class Incomplete(Exception):
    """More bytes are needed to say where the TOC ends."""


class Unsupported(Exception):
    """Not an archive layout this parser knows: keep the whole file."""


class _Cursor:
    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0
        self.int_size = self.off_size = 4

    def byte(self) -> int:
        if self.at >= len(self.data):
            raise Incomplete
        self.at += 1
        return self.data[self.at - 1]

    def skip(self, n: int) -> None:
        if self.at + n > len(self.data):
            raise Incomplete
        self.at += n

    def int(self) -> int:
        negative = self.byte()
        end = self.at + self.int_size
        if end > len(self.data):
            raise Incomplete
        value = int.from_bytes(self.data[self.at:end], "little")
        self.at = end
        return -value if negative else value

    def str(self) -> bytes | None:
        length = self.int()
        if length < 0:
            return None
        start = self.at
        self.skip(length)
        return self.data[start:self.at]


def toc_end(data: bytes) -> int | None:
    """The offset just past the TOC of the custom archive that ``data`` begins with; None: keep the whole archive.

    Raises Incomplete while ``data`` holds only part of the header and TOC.
    """
    try:
        return _toc_end(_Cursor(data))
    except Unsupported:
        return None


def _toc_end(c: _Cursor) -> int:
    if len(c.data) < len(MAGIC):
        raise Incomplete
    if c.data[:len(MAGIC)] != MAGIC:
        raise Unsupported
    c.skip(len(MAGIC))
    version = (c.byte(), c.byte(), c.byte())
    if not OLDEST <= version <= NEWEST:
        raise Unsupported
    c.int_size, c.off_size = c.byte(), c.byte()
    if not (1 <= c.int_size <= 8 and 1 <= c.off_size <= 8) or c.byte() != FORMAT_CUSTOM:
        raise Unsupported
    if version >= (1, 15, 0):
        c.byte()  # the compression algorithm
    else:
        c.int()  # the compression level
    for _ in range(7):  # the creation time: sec, min, hour, mday, mon, year, isdst
        c.int()
    for _ in range(3):  # database name, server version, pg_dump version
        c.str()
    count = c.int()
    if count < 0:
        raise Unsupported
    with_data: set[int] = set()
    for _ in range(count):
        dump_id = c.int()
        had_dumper = c.int()
        c.str(), c.str(), c.str(), c.str()  # tableoid, oid, tag, desc
        c.int()  # section
        c.str(), c.str(), c.str(), c.str(), c.str()  # defn, dropStmt, copyStmt, namespace, tablespace
        if version >= (1, 14, 0):
            c.str()  # table access method
        c.str()  # owner
        c.str()  # "false": tables with OIDs are gone
        while c.str() is not None:  # dependencies, ended by a NULL string
            pass
        flag = c.byte()  # the custom format's data offset: not set, set, or no data
        if flag not in (1, 2, 3):
            raise Unsupported
        c.skip(c.off_size)
        if had_dumper and flag != 3:
            with_data.add(dump_id)
    end = c.at
    # A parse that went astray would not land on a data block of one of its own entries (or on the end).
    if end < len(c.data):
        if c.byte() not in DATA_BLOCKS or c.int() not in with_data:
            raise Unsupported
    elif with_data:
        raise Incomplete  # the first data block's header decides
    return end


class TocOnly:
    """A write-only sink that keeps a custom archive's header and TOC in ``fh`` and leaves the data a hole.

    Bytes are held until the TOC's end is known (a few KiB to a few MiB), then only the
    header and TOC are written; ``close`` sets the file to the stream's full length, so
    every offset in it stays where pg_restore expects it. A stream this parser does not
    know, or whose TOC is not found within ``limit`` bytes, is written whole.
    """

    def __init__(self, fh, limit: int = 64 << 20) -> None:
        self._fh, self._limit = fh, limit
        self._held: bytearray | None = bytearray()
        self._whole = False
        self._retry_at = 0  # parse again once this many bytes are held: doubling keeps a huge TOC's parses linear
        self.size = 0
        self.written = 0

    def write(self, chunk) -> None:
        self.size += len(chunk)
        if self._whole:
            self._put(chunk)
        elif self._held is not None:
            self._held += chunk
            if len(self._held) >= self._retry_at:
                self._settle()

    def _settle(self) -> None:
        """Look for the TOC's end in what is held: write up to it, or the whole stream when it cannot be found."""
        try:
            end = toc_end(bytes(self._held))
        except Incomplete:
            if len(self._held) > self._limit:
                self._keep_whole()
            self._retry_at = 2 * len(self._held)
            return
        if end is None:
            self._keep_whole()
        else:
            self._put(self._held[:end])
            self._held = None

    def _keep_whole(self) -> None:
        self._whole = True
        held, self._held = self._held, None
        self._put(held)

    def _put(self, data) -> None:
        self._fh.write(data)
        self.written += len(data)

    def close(self) -> None:
        """Settle what is still held (a TOC not found by the stream's end: keep it whole), then set the full length."""
        if self._held is not None:
            self._settle()  # one last look for the TOC's end in what the stream left
        if self._held is not None:
            self._keep_whole()
        self._fh.flush()
        if not self._whole:
            os.ftruncate(self._fh.fileno(), self.size)
