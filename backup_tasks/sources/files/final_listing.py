"""The second pass of a files dump: the draft listing and tar's scanned members, read side by side, become the tree listing.

The first pass (changes.py) wrote a draft line per path in tree order and the member
list tar archived in that same order; tar's output was scanned as it passed, each member
spooled to a file. Reading the draft and the spool in step gives each archived file the
size and sha256 the scan measured without holding either side in memory.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Iterator

from backup_tasks.sources.files.changes import BUFFER, DRAFT, RENAMES, Chain, lines
from backup_tasks.sources.files.tree_listing import ListingWriter, decode, encode, key


class ArchiveSpool:
    """The archive's members as tar's output is scanned: one JSON line each in the work directory, and counts.

    The second pass reads it back in step with the draft, so neither the dump nor the
    pass holds the archive's listing in memory. Hard links are the exception that needs
    a lookup (their bytes are under an earlier member's name), so the names they link to
    are kept: as many as there are hard-linked files, not files.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._out = open(path, "wb", buffering=BUFFER)
        self.entries = self.files = self.bytes = 0
        self.link_targets: set[str] = set()

    def add(self, entry: dict) -> None:
        self._out.write(encode(entry) + b"\n")
        self.entries += 1
        if entry["type"] == "file":
            self.files += 1
            self.bytes += entry["size"]
        elif entry["type"] == "hardlink":
            self.link_targets.add(entry["link"])

    def close(self) -> None:
        self._out.close()

    def __iter__(self) -> Iterator[dict]:
        for line in lines(self.path):
            yield decode(line)


def second_pass(workdir: Path, archive: ArchiveSpool, chain: Chain, *, full: bool = False) -> int:
    """Write the final listing: archived files get the size and sha256 the tar scan measured.

    ``archive``: the members tar wrote, in the member list's order, which is the draft's
    (tree order): the two are read side by side. In a ``full`` every path is a member; in
    an incremental only the files whose content is archived. A path whose member is not
    where the draft expects it is one tar no longer found (deleted between the walk and
    tar's read): it is left out, it does not exist in this backup. So the listing names
    exactly the archive's members, which is what verify and restore compare the archive
    with. A hard link points at the member that carries the bytes, so a restore can find
    them under that name. A new file found to be a rename takes the parent's reference.
    """
    workdir = Path(workdir)
    renames = sqlite3.connect(str(workdir / RENAMES)) if (workdir / RENAMES).exists() else None
    members = iter(archive)
    current = next(members, None)
    targets: dict[str, dict] = {}  # hard links' targets seen so far: name -> scan entry

    def member(path: str) -> dict | None:
        nonlocal current
        if current is None or current["path"] != path:
            return None
        found, current = current, next(members, None)
        if path in archive.link_targets:
            targets[path] = found
        return found

    writer = ListingWriter(chain.listing_out)
    try:
        with open(workdir / DRAFT, "rb", buffering=BUFFER) as draft:
            for line in draft:
                tag = line[:1]
                if tag == b"+" and not full:  # not in the archive, nothing to add: copied without decoding
                    writer.write_line(line[1:])
                    continue
                entry = decode(line[1:])
                if tag == b"N":
                    row = renames.execute("SELECT line FROM renamed WHERE path = ?", (key(entry["path"]),)).fetchone() \
                        if renames is not None else None
                    if row is not None:  # a rename: its bytes are in the parent chain, not in this archive
                        carried = decode(row[0])
                        del carried["path"]
                        entry.update(carried)
                        writer.write(entry)
                        continue
                    entry["change"], entry["in"] = "new", chain.backup_id
                scanned = member(entry["path"])
                if scanned is None:
                    continue
                if entry["type"] != "file":
                    if scanned.get("link") is not None:  # the link tar stored, should it have moved since the walk
                        entry["link"] = scanned["link"]
                    writer.write(entry)
                    continue
                if scanned["type"] == "hardlink":
                    target = targets.get(scanned["link"])
                    if target is None or "sha256" not in target:
                        continue
                    entry["member"] = scanned["link"]
                    scanned = target
                elif scanned["type"] != "file":
                    continue
                entry["size"], entry["sha256"] = scanned["size"], scanned["sha256"]
                writer.write(entry)
    finally:
        count = writer.close()
        if renames is not None:
            renames.close()
    return count
