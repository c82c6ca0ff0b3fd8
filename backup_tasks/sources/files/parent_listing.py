"""The parent's listing as an incremental's join reads it: its entries in tree order, each with its tree key.

Why the order is checked here, as the join reads, and not in a pass of its own: every
listing written since listings were sorted is in order, and reading one costs as much as
the join's own work on it. An older listing (roots named out of order) raises Unsorted
part-way; the join then starts again from a copy sorted on disk.
"""

from __future__ import annotations

import io
from itertools import chain
import sqlite3
from pathlib import Path
from typing import Iterator

import orjson
import zstandard

from backup_tasks.defaults import CHUNK_SIZE
from backup_tasks.sources.files.tree_listing import decode, listing_lines, tree_key


class Unsorted(Exception):
    """The parent listing is not in tree order; the join starts again from a sorted copy."""


def in_order(listing: Path, start: str | None = None, stop: str | None = None) -> Iterator[tuple[str, dict]]:
    """The parent's entries with their tree keys; Unsorted at the first one out of order.

    What listing_lines and decode do, in one loop: this runs once per path of the tree,
    and each generator or call between the file and the join cost a tenth of a µs a line.
    ``start`` and ``stop`` keep the entries with ``start <= key < stop``: the part of the
    listing one half of a split join reads (changes.py). The lines before ``start`` are
    passed over with their path read from the bytes, not decoded: the other half reads
    and checks those.
    """
    loads, error = orjson.loads, orjson.JSONDecodeError
    last = None
    with open(listing, "rb") as raw:
        reader = zstandard.ZstdDecompressor().stream_reader(raw, read_size=CHUNK_SIZE)
        lines = io.BufferedReader(reader, CHUNK_SIZE)
        if start is not None:
            lines = _from(lines, start)
        for line in lines:
            try:
                entry = loads(line)
            except error:  # a blank line (skipped), or a name that is not UTF-8 (a \udcxx escape)
                if not line.strip():
                    continue
                entry = decode(line)
            k = entry["path"].replace("/", "\0")  # tree_key, inline
            if last is not None and k <= last:
                raise Unsorted
            if stop is not None and k >= stop:
                return
            last = k
            yield k, entry


_HEAD = b'{"path":"'


def _from(lines: Iterator[bytes], start: str) -> Iterator[bytes]:
    """``lines`` from the first whose path's key is ``start`` or after, read past in a loop of its own.

    The rest is returned as a chain (C), not yielded from here: a generator step per
    line would cost more than the skipping saved.
    """
    head, cut = _HEAD, len(_HEAD)
    for line in lines:
        end = line.find(b'"', cut)
        name = line[cut:end]
        if not line.startswith(head) or end < 0 or b"\\" in name:  # not our writer's plain form: decoded
            if not line.strip():
                continue
            path = decode(line)["path"]
        else:
            path = name.decode("utf-8")
        if tree_key(path) >= start:
            return chain((line,), lines)
    return iter(())


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
