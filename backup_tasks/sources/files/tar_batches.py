"""Cutting a long member list into batches, one GNU tar run each, never between two names of one file.

Why: given its names with ``-T``, GNU tar enters every file it archives in its hard-link
table, not only files with several links (a file named twice in the list must come out
as a link the second time). That is about 110 bytes a file: tar itself peaked at 14 MiB
for 100k files and 112 MiB for a million (measured), the one part of a backup whose
memory still grew with the file count. Runs of at most ``BATCH`` names keep it flat;
``gnu_tar.run_tar`` joins their archives into one by dropping the end-of-archive blocks
between them, so the stored archive is one ordinary tar, in the list's order.

A hard link stays a tar hard link only if tar saw the file's first name in the same run,
so a batch never ends between two names of one file (same device and inode, more than
one link, not a directory): it ends at the first place after ``BATCH`` names that no such
file spans. Finding those places needs each name's device, inode and link count, done
only for lists longer than one batch: the files dump's first pass stated every name
already and wrote down the hard-linked ones (``Linked``), so only those are looked up;
without that record it costs one ``lstat`` a name. What is remembered is one entry per
hard-linked name, as tar would keep.
"""

from __future__ import annotations

import os
import stat
import struct
from pathlib import Path
from typing import BinaryIO, Iterator

#: names a tar run gets at most (unless a hard-linked file spans the cut): tar's table stays near 11 MiB
BATCH = 100_000
_READ = 1 << 20


def names(list_file: Path) -> Iterator[bytes]:
    """The NUL-terminated names of ``list_file``, read in pieces (one name made at a time, no list of them)."""
    pending = b""
    with open(list_file, "rb") as f:
        while chunk := f.read(_READ):
            buf, start = pending + chunk, 0
            while (end := buf.find(b"\0", start)) >= 0:
                yield buf[start:end]
                start = end + 1
            pending = buf[start:]
    if pending:
        yield pending


def _count(list_file: Path) -> int:
    count, last = 0, b"\0"
    with open(list_file, "rb") as f:
        while chunk := f.read(_READ):
            count, last = count + chunk.count(b"\0"), chunk[-1:]
    return count + (last != b"\0")


class Linked:
    """Writes down, as a walk stats them, the names that are one of several links to a file (not a directory).

    One record each: device, inode, length of the name, the name. ``batch_sizes`` reads it
    instead of stating every name of the list again.
    """

    RECORD = struct.Struct("<QQI")

    def __init__(self, out: BinaryIO) -> None:
        self._out = out

    def add(self, name: bytes, st: os.stat_result) -> None:
        if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
            self._out.write(self.RECORD.pack(st.st_dev, st.st_ino, len(name)) + name)


def _read_linked(path: Path) -> dict[bytes, tuple[int, int]]:
    known: dict[bytes, tuple[int, int]] = {}
    head = Linked.RECORD.size
    with open(path, "rb") as f:
        while record := f.read(head):
            dev, ino, size = Linked.RECORD.unpack(record)
            known[f.read(size)] = (dev, ino)
    return known


def batch_sizes(list_file: Path, batch: int = BATCH, linked: Path | None = None) -> list[int]:
    """How many names each tar run takes, in order; one run (or none) for a list of at most ``batch`` names.

    ``linked``: what a ``Linked`` wrote for every name of the list (and maybe others), if a
    walk did; otherwise each name is stated here.
    """
    total = _count(list_file)
    if total <= batch:
        return [total] if total else []
    spans = _link_spans(list_file, None if linked is None else _read_linked(linked))
    sizes, start, i = [], 0, 0
    while start + batch < total:
        cut = start + batch
        while i < len(spans) and spans[i][1] < cut:  # spans wholly before this cut
            i += 1
        if i < len(spans) and spans[i][0] < cut:  # the cut would separate two names of one file
            cut = spans[i][1] + 1
        if cut >= total:
            break
        sizes.append(cut - start)
        start = cut
    sizes.append(total - start)
    return sizes


def _link_spans(list_file: Path, known: dict[bytes, tuple[int, int]] | None) -> list[tuple[int, int]]:
    """Merged (first, last) positions in the list of the names of each file with several links.

    ``known``: the hard-linked names and their (device, inode), from the walk; None: stat each name.
    """
    seen: dict[tuple[int, int], list[int]] = {}
    if known is not None:
        if known:
            for position, name in enumerate(names(list_file)):
                if (file := known.get(name)) is not None:
                    seen.setdefault(file, [position, position])[1] = position
    else:
        for position, name in enumerate(names(list_file)):
            try:
                st = os.lstat(b"/" + name)  # names are relative to '/', as tar -C / reads them
            except OSError:
                continue  # vanished since the walk: tar will say so
            if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
                seen.setdefault((st.st_dev, st.st_ino), [position, position])[1] = position
    merged: list[tuple[int, int]] = []
    for first, last in sorted((f, la) for f, la in seen.values() if la > f):
        if merged and first <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], last))
        else:
            merged.append((first, last))
    return merged


def write_batches(list_file: Path, sizes: list[int], workdir: Path) -> list[Path]:
    """One list file per batch (``list_file`` itself when there is one batch)."""
    if len(sizes) <= 1:
        return [list_file]
    paths = [Path(workdir) / f"{list_file.name}.{n}" for n in range(len(sizes))]
    source = names(list_file)
    for path, size in zip(paths, sizes):
        with open(path, "wb") as f:
            for _ in range(size):
                f.write(next(source) + b"\0")
    return paths
