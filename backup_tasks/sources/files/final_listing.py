"""The second pass of a files dump: the draft listing and tar's scanned members, read side by side, become the tree listing.

The first pass (changes.py) wrote a draft line per path in tree order and the member
list tar archived in that same order; tar's output was scanned as it passed, each member
spooled to a file. Reading the draft and the spool in step gives each archived file the
size and sha256 the scan measured without holding either side in memory.
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO, Iterator

from backup_tasks.sources.files.changes import BUFFER, DRAFT, MARK, MARKS, RENAMED, Chain, lines
from backup_tasks.sources.files.tree_listing import ListingWriter, decode, encode


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
    renamed = _renamed(workdir / RENAMED)
    rename = next(renamed, None)  # the next rename the first pass found, in draft order
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

    def settle(tag: bytes, line: bytes) -> None:
        nonlocal rename
        entry = decode(line)
        if tag == b"N":
            if rename is not None and rename["path"] == entry["path"]:  # its bytes are in the parent chain, not here
                entry.update(rename)
                writer.write(entry)
                rename = next(renamed, None)
                return
            entry["change"], entry["in"] = "new", chain.backup_id
        scanned = member(entry["path"])
        if scanned is None:
            return
        if entry["type"] != "file":
            if scanned.get("link") is not None:  # the link tar stored, should it have moved since the walk
                entry["link"] = scanned["link"]
            writer.write(entry)
            return
        if scanned["type"] == "hardlink":
            target = targets.get(scanned["link"])
            if target is None or "sha256" not in target:
                return
            entry["member"] = scanned["link"]
            scanned = target
        elif scanned["type"] != "file":
            return
        entry["size"], entry["sha256"] = scanned["size"], scanned["sha256"]
        writer.write(entry)

    writer = ListingWriter(chain.listing_out)
    try:
        with open(workdir / DRAFT, "rb", buffering=BUFFER) as draft:
            if full:  # every path is a member: each line is matched with the archive
                for line in draft:
                    settle(b"?", line)
            else:
                at = 0
                for offset, tag in _marks(workdir / MARKS):
                    _copy(draft, offset - at, writer)  # final lines, not in the archive: copied as they are
                    line = draft.readline()
                    at = offset + len(line)
                    settle(tag, line)
                _copy(draft, None, writer)
    finally:
        count = writer.close()
        renamed.close()
    return count


def _renamed(path: Path) -> Iterator[dict]:
    if path.exists():
        for line in lines(path):
            yield decode(line)


def _marks(path: Path) -> Iterator[tuple[int, bytes]]:
    """The draft lines the first pass marked for settling, in draft order: (offset, tag)."""
    with open(path, "rb", buffering=BUFFER) as fh:
        while record := fh.read(MARK.size * 4096):
            yield from MARK.iter_unpack(record)


def _copy(draft: BinaryIO, size: int | None, writer: ListingWriter) -> None:
    """Hand ``size`` bytes of whole draft lines (None: the rest of the draft) to the listing, a block at a time."""
    while size is None or size > 0:
        block = draft.read(BUFFER if size is None else min(size, BUFFER))
        if not block:
            break
        if size is not None:
            size -= len(block)
        writer.write_lines(block, block.count(b"\n"))

