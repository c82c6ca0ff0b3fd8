"""Picking a few members out of a tar as it passes by in chunks, without holding it back.

The base backup streams pg_basebackup's tar straight into the chain's file; the dump
stage still has to know what is inside (the backup_manifest's WAL range, pg_control's
system identifier, the backup_label). tar_reader.py pulls from a stream; here the bytes
are pushed, chunk by chunk, on their way to the file, so this is the same header
walk turned inside out: a small state machine that keeps the bytes of the members it
was asked for and only counts the rest. What it keeps is bounded by the caller's
limits, so memory does not grow with the cluster.
"""

from __future__ import annotations

import tarfile

from backup_tasks.sources.postgres.tar_reader import BLOCK, FILE_TYPES, TarError, parse_pax

_PAX = "\0pax"


class Picker:
    """Feed it the tar's bytes in order; ``picked`` holds the wanted members' bytes once each is complete."""

    def __init__(self, wanted: dict[str, int]) -> None:
        #: name in the archive -> the most bytes worth keeping (a larger member is a damaged or foreign archive)
        self.wanted = wanted
        self.picked: dict[str, bytes] = {}
        self.files = 0
        self.ended = False
        self._header = bytearray()
        self._left = 0  # bytes of the current member still to come
        self._pad = 0  # zero padding after it
        self._keep: bytearray | None = None
        self._name = ""
        self._pax: dict[str, str] = {}

    def feed(self, chunk: bytes) -> None:
        view, pos, end = memoryview(chunk), 0, len(chunk)
        while pos < end and not self.ended:
            if self._left:
                n = min(self._left, end - pos)
                if self._keep is not None:
                    self._keep += view[pos:pos + n]
                pos += n
                self._left -= n
                if not self._left:
                    self._member_done()
            elif self._pad:
                n = min(self._pad, end - pos)
                pos += n
                self._pad -= n
            else:
                n = min(BLOCK - len(self._header), end - pos)
                self._header += view[pos:pos + n]
                pos += n
                if len(self._header) == BLOCK:
                    self._start_member(bytes(self._header))
                    self._header.clear()

    def _start_member(self, block: bytes) -> None:
        if block == bytes(BLOCK):
            self.ended = True  # what follows is the end-of-archive zeros and the record's padding
            return
        try:
            info = tarfile.TarInfo.frombuf(block, tarfile.ENCODING, "surrogateescape")
        except tarfile.HeaderError as exc:
            raise TarError(f"a damaged tar header ({exc})") from None
        if info.type in (tarfile.XHDTYPE, tarfile.XGLTYPE):
            name, size = _PAX if info.type == tarfile.XHDTYPE else "", info.size
        else:
            name = self._pax.get("path", info.name)
            size = int(self._pax["size"]) if "size" in self._pax else info.size
            size = size if info.type in FILE_TYPES else 0
            self._pax = {}
            self.files += info.type in FILE_TYPES
        self._name, self._left, self._pad = name, size, -size % BLOCK
        limit = 1 << 20 if name == _PAX else self.wanted.get(name)
        self._keep = None
        if limit is not None:
            if size > limit:
                raise TarError(f"{name} holds {size} bytes, more than the {limit} a base backup's {name} can hold")
            self._keep = bytearray()
        if not size:
            self._member_done()

    def _member_done(self) -> None:
        if self._keep is None:
            return
        if self._name == _PAX:
            self._pax = parse_pax(bytes(self._keep))
        else:
            self.picked[self._name] = bytes(self._keep)
        self._keep = None
