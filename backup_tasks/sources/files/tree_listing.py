"""The tree listing: every path of a files backup at that moment, as zstd-compressed JSON lines.

Why a separate object and not a manifest field: a tree of 100k files gave a 25 MiB
manifest that verify held twice in memory. The listing is written and read one line at
a time, so memory does not grow with the number of files; the signed manifest carries
its sha256, so it cannot be swapped.

Why it describes the whole tree, even for an incremental: a restore of any point of a
chain then reads one listing and knows what exists (anything absent was deleted), each
path's metadata, and which backup's archive holds its bytes (``in``, under the member
name ``member`` when that differs from ``path``: a rename or a hard link).

One line per path, in tree order (a directory before its contents, names compared as
``tree_key`` does), so the next incremental can walk the tree and the parent's listing
side by side instead of looking each path up::

    {"path": "srv/app/a.txt", "type": "file", "mode": 420, "uid": 0, "gid": 0,
     "mtime_ns": ..., "mtime": "<s>.<9 digits>", "ctime_ns": ..., "ino": ..., "dev": ..., "size": 3,
     "sha256": "...", "in": "<backup id>", "change": "modified"}

``type`` is ``file``, ``dir`` or ``symlink`` (with ``link``). A file with more than
one name has ``nlink``: the paths of a listing with the same (``dev``, ``ino``,
``sha256``) are one file, restored as hard links. ``change`` says why the
entry is what it is relative to the parent: ``new``, ``modified``, ``metadata`` (only
ctime moved: chmod, chown), ``renamed`` (content found under another path of the
parent), ``unchanged``; a full backup says ``new`` for everything.

Readable without our code: ``zstd -dc listing.jsonl.zst | jq -r 'select(.in=="ID") | .path'``.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Iterator

import orjson
import zstandard

from backup_tasks.defaults import CHUNK_SIZE

NAME = "listing.jsonl.zst"

#: the fallback encoder, for names that are not UTF-8: they travel as \udcxx escapes
#: (ensure_ascii) and come back byte-exact; orjson refuses such strings.
_ascii = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"), check_circular=False).encode


def encode(entry: dict) -> bytes:
    """One listing line without its newline: orjson (a tenth of json's time), json for non-UTF-8 names."""
    try:
        return orjson.dumps(entry)
    except TypeError:
        return _ascii(entry).encode("ascii")


def decode(line: bytes | str) -> dict:
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError:  # a \udcxx escape: a name that is not UTF-8
        return json.loads(line)


def tree_key(path: str) -> str:
    """The order of a listing: a directory right before its contents, siblings by name.

    Comparing the names with every '/' as the lowest character is a depth-first walk
    that visits each directory's entries sorted by name, which is how members.py walks.
    """
    return path.replace("/", "\0")


class ListingWriter:
    """Append entries to a zstd JSON-lines file; ``close`` returns how many were written."""

    def __init__(self, path: Path) -> None:
        self._raw = open(path, "wb")
        self._zst = zstandard.ZstdCompressor(level=1, write_checksum=True).stream_writer(self._raw, closefd=False)
        # level 1: JSON lines compress as small at level 1 as at 3 (measured), in half the time
        self._lines: list[bytes] = []  # batched: one compressor call per thousand lines, not per line
        self.count = 0

    def write(self, entry: dict) -> None:
        self.write_line(encode(entry) + b"\n")

    def write_line(self, line: bytes) -> None:
        """An entry already encoded as one JSON line (ending in a newline)."""
        self._lines.append(line)
        self.count += 1
        if len(self._lines) >= 1024:
            self._flush()

    def write_lines(self, lines: bytes, count: int) -> None:
        """``count`` entries already encoded, one JSON line each (every one ending in a newline), in one block."""
        self._flush()
        self._zst.write(lines)
        self.count += count

    def counted(self, count: int) -> None:
        """``count`` entries handed over earlier in blocks given as none (write_lines with 0): their lines were not counted."""
        self.count += count

    def _flush(self) -> None:
        self._zst.write(b"".join(self._lines))
        self._lines.clear()

    def close(self) -> int:
        self._flush()
        self._zst.close()
        self._raw.close()
        return self.count


def listing_lines(path: Path) -> Iterator[bytes]:
    """The raw JSON lines of a listing file, one at a time."""
    with open(path, "rb") as raw:
        reader = zstandard.ZstdDecompressor().stream_reader(raw, read_size=CHUNK_SIZE)
        for line in io.BufferedReader(reader, CHUNK_SIZE):
            if line.strip():
                yield line


def read_listing(path: Path) -> Iterator[dict]:
    """The entries of a listing file, one at a time."""
    for line in listing_lines(path):
        yield decode(line)


def key(path: str) -> bytes:
    """A path as SQLite can index it: its original bytes (names need not be UTF-8; SQLite text must be)."""
    return path.encode("utf-8", "surrogateescape")
