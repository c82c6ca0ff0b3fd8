"""The tree listing: every path of a files backup at that moment, as zstd-compressed JSON lines.

Why a separate object and not a manifest field: a tree of 100k files gave a 25 MiB
manifest that verify held twice in memory. The listing is written and read one line at
a time, so memory does not grow with the number of files; the signed manifest carries
its sha256, so it cannot be swapped.

Why it describes the whole tree, even for an incremental: a restore of any point of a
chain then reads one listing and knows what exists (anything absent was deleted), each
path's metadata, and which backup's archive holds its bytes (``in``, under the member
name ``member`` when that differs from ``path``: a rename or a hard link).

One line per path, in walk order (a directory before its contents)::

    {"path": "srv/app/a.txt", "type": "file", "mode": 420, "uid": 0, "gid": 0,
     "mtime_ns": ..., "mtime": "<s>.<9 digits>", "ctime_ns": ..., "ino": ..., "dev": ..., "size": 3,
     "sha256": "...", "in": "<backup id>", "change": "modified"}

``type`` is ``file``, ``dir`` or ``symlink`` (with ``link``). ``change`` says why the
entry is what it is relative to the parent: ``new``, ``modified``, ``metadata`` (only
ctime moved: chmod, chown), ``renamed`` (content found under another path of the
parent), ``unchanged``; a full backup says ``new`` for everything.

Readable without our code: ``zstd -dc listing.jsonl.zst | jq -r 'select(.in=="ID") | .path'``.
"""

from __future__ import annotations

import io
import json
import sqlite3
from pathlib import Path
from typing import Iterator

import zstandard

from backup_tasks.defaults import CHUNK_SIZE

NAME = "listing.jsonl.zst"

#: one encoder for every line: json.dumps with options builds a new encoder per call.
#: ensure_ascii: names that are not UTF-8 travel as \udcxx escapes and come back byte-exact.
encode = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"), check_circular=False).encode


class ListingWriter:
    """Append entries to a zstd JSON-lines file; ``close`` returns how many were written."""

    def __init__(self, path: Path) -> None:
        self._raw = open(path, "wb")
        self._zst = zstandard.ZstdCompressor(level=3, write_checksum=True).stream_writer(self._raw, closefd=False)
        self._text = io.TextIOWrapper(self._zst, encoding="utf-8", write_through=False)
        self.count = 0

    def write(self, entry: dict) -> None:
        self._text.write(encode(entry) + "\n")
        self.count += 1

    def write_line(self, line: str) -> None:
        """An entry already encoded as one JSON line (ending in a newline)."""
        self._text.write(line)
        self.count += 1

    def close(self) -> int:
        self._text.flush()
        self._text.detach()
        self._zst.close()
        self._raw.close()
        return self.count


def read_listing(path: Path) -> Iterator[dict]:
    """The entries of a listing file, one at a time."""
    with open(path, "rb") as raw:
        reader = zstandard.ZstdDecompressor().stream_reader(raw, read_size=CHUNK_SIZE)
        for line in io.TextIOWrapper(reader, encoding="utf-8"):
            if line.strip():
                yield json.loads(line)


def key(path: str) -> bytes:
    """A path as SQLite can index it: its original bytes (names need not be UTF-8; SQLite text must be)."""
    return path.encode("utf-8", "surrogateescape")


def _name(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


_NAMES = ("link", "member")


class ParentIndex:
    """The parent backup's listing, indexed on disk (SQLite in the run's work directory).

    Change detection looks every path up by name, and every new path up by (inode, size,
    mtime) to find renames. A dict of the whole parent tree would grow with the number of
    files; an on-disk index keeps the worker's memory flat. Only the fields change
    detection reads are kept, as columns: decoding a JSON body per lookup cost more than
    the lookup.
    """

    FIELDS = ("type", "size", "mtime_ns", "ctime_ns", "ino", "mode", "uid", "gid", "link", "sha256", "in", "member")

    def __init__(self, listing: Path, workdir: Path) -> None:
        self.db = sqlite3.connect(str(Path(workdir) / "parent-index.sqlite"))
        self.db.execute("PRAGMA journal_mode=OFF")
        self.db.execute("PRAGMA synchronous=OFF")
        self.db.execute("DROP TABLE IF EXISTS e")
        self.db.execute("CREATE TABLE e (path BLOB PRIMARY KEY, " + ", ".join(f'"{f}"' for f in self.FIELDS) + ")")
        # names (path, link, member) go in as their bytes and come back as str in _entry
        rows = ((key(e["path"]), *(key(e[f]) if f in _NAMES and f in e else e.get(f) for f in self.FIELDS))
                for e in read_listing(listing))
        self.db.executemany(f"INSERT OR REPLACE INTO e VALUES ({', '.join('?' * (len(self.FIELDS) + 1))})", rows)
        self.db.execute('CREATE INDEX by_content ON e (ino, size, mtime_ns)')
        self.db.commit()
        self.count = self.db.execute("SELECT count(*) FROM e").fetchone()[0]
        columns = "path, " + ", ".join(f'"{f}"' for f in self.FIELDS)
        self._by_path = f"SELECT {columns} FROM e WHERE path = ?"
        self._by_content = (f"SELECT {columns} FROM e WHERE ino = ? AND size = ? AND mtime_ns = ? AND type = 'file'"
                            " AND sha256 IS NOT NULL LIMIT 1")

    def _entry(self, row: tuple) -> dict:
        entry = {"path": _name(row[0])}
        entry.update((f, _name(v) if isinstance(v, bytes) else v) for f, v in zip(self.FIELDS, row[1:]) if v is not None)
        return entry

    def get(self, path: str) -> dict | None:
        row = self.db.execute(self._by_path, (key(path),)).fetchone()
        return self._entry(row) if row else None

    def same_content(self, ino: int, size: int, mtime_ns: int) -> dict | None:
        """A file of the parent with this (inode, size, mtime): the same bytes under an older name."""
        row = self.db.execute(self._by_content, (ino, size, mtime_ns)).fetchone()
        return self._entry(row) if row else None

    def close(self) -> None:
        self.db.close()
