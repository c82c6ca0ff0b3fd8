"""The parent's listing as an incremental's join reads it: its entries in tree order, each with its tree key.

Why the order is checked here, as the join reads, and not in a pass of its own: every
listing written since listings were sorted is in order, and reading one costs as much as
the join's own work on it. An older listing (roots named out of order) raises Unsorted
part-way; the join then starts again from a copy sorted on disk.
"""

from __future__ import annotations

import io
import sqlite3
from pathlib import Path
from typing import Iterator

import orjson
import zstandard

from backup_tasks.defaults import CHUNK_SIZE
from backup_tasks.sources.files.tree_listing import decode, listing_lines, tree_key


class Unsorted(Exception):
    """The parent listing is not in tree order; the join starts again from a sorted copy."""


def in_order(listing: Path) -> Iterator[tuple[str, dict]]:
    """The parent's entries with their tree keys; Unsorted at the first one out of order.

    What listing_lines and decode do, in one loop: this runs once per path of the tree,
    and each generator or call between the file and the join cost a tenth of a µs a line.
    """
    loads, error = orjson.loads, orjson.JSONDecodeError
    last = None
    with open(listing, "rb") as raw:
        reader = zstandard.ZstdDecompressor().stream_reader(raw, read_size=CHUNK_SIZE)
        for line in io.BufferedReader(reader, CHUNK_SIZE):
            try:
                entry = loads(line)
            except error:  # a blank line (skipped), or a name that is not UTF-8 (a \udcxx escape)
                if not line.strip():
                    continue
                entry = decode(line)
            k = entry["path"].replace("/", "\0")  # tree_key, inline
            if last is not None and k <= last:
                raise Unsorted
            last = k
            yield k, entry


def sorted_on_disk(listing: Path, workdir: Path) -> Iterator[tuple[str, dict]]:
    """The parent's entries sorted on disk: UTF-32 big-endian bytes sort as Python compares the strings."""
    db = sqlite3.connect(str(workdir / "parent-sorted.sqlite"))
    try:
        db.execute("PRAGMA journal_mode=OFF")
        db.execute("DROP TABLE IF EXISTS p")
        db.execute("CREATE TABLE p (k BLOB, line BLOB)")
        db.executemany("INSERT INTO p VALUES (?, ?)",
                       ((tree_key(decode(line)["path"]).encode("utf-32-be", "surrogatepass"), line)
                        for line in listing_lines(listing)))
        for (line,) in db.execute("SELECT line FROM p ORDER BY k"):
            entry = decode(line)
            yield tree_key(entry["path"]), entry
    finally:
        db.close()
