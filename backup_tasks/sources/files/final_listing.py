"""The second pass of a files dump: the draft listing and tar's scanned members, read side by side, become the tree listing.

The first pass (changes.py) wrote a draft line per path in tree order and the member
list tar archived in that same order; tar's output was scanned as it passed, each member
spooled to a file. Reading the draft and the spool in step gives each archived file the
size and sha256 the scan measured without holding either side in memory.
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO, Iterator

import orjson

from backup_tasks.sources.files.changes import BUFFER, DRAFT, MARK, MARKS, RENAMED, Chain, lines
from backup_tasks.sources.files.tree_listing import ListingWriter, decode, encode


class ArchiveSpool:
    """The archive's members as tar's output is scanned: one JSON line each in the work directory, and counts.

    The second pass reads it back in step with the draft, so neither the dump nor the
    pass holds the archive's listing in memory. Hard links are the exception that needs
    a lookup (their bytes are under an earlier member's name), so the names they link to
    are kept: as many as there are hard-linked files, not files.

    A line is the list ``[path, type, size, sha256, link]``, the only fields the second
    pass reads: half the decoding of the scanner's whole entry (mode, mtime as a float).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._out = open(path, "wb", buffering=BUFFER)
        self.entries = self.files = self.bytes = 0
        self.link_targets: set[str] = set()

    def add(self, entry: dict) -> None:
        kind = entry["type"]
        record = [entry["path"], kind, entry["size"], entry.get("sha256"), entry.get("link")]
        try:
            self._out.write(orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE))
        except TypeError:  # a name that is not UTF-8
            self._out.write(encode(record) + b"\n")
        self.entries += 1
        if kind == "file":
            self.files += 1
            self.bytes += entry["size"]
        elif kind == "hardlink":
            self.link_targets.add(entry["link"])

    def close(self) -> None:
        self._out.close()


def second_pass(workdir: Path, archive: ArchiveSpool, chain: Chain, *, full: bool = False, draft_lines: int) -> int:
    """Write the final listing: archived files get the size and sha256 the tar scan measured.

    ``archive``: the members tar wrote, in the member list's order, which is the draft's
    (tree order): the two are read side by side. In a ``full`` every path is a member; in
    an incremental only the files whose content is archived. A path whose member is not
    where the draft expects it is one tar no longer found (deleted between the walk and
    tar's read): it is left out, it does not exist in this backup. So the listing names
    exactly the archive's members, which is what verify and restore compare the archive
    with. A hard link points at the member that carries the bytes, so a restore can find
    them under that name. A new file found to be a rename takes the parent's reference.
    ``draft_lines``: how many lines the first pass wrote (its counts), so the lines copied
    in blocks are counted without counting the newlines of the whole draft again.
    """
    workdir = Path(workdir)
    renamed = _renamed(workdir / RENAMED)
    rename = next(renamed, None)  # the next rename the first pass found, in draft order
    targets: dict[str, list] = {}  # hard links' targets seen so far: name -> spool record
    new_here = b',"change":"new","in":' + orjson.dumps(chain.backup_id) if chain.backup_id.isascii() else None

    def settle(tag: bytes, line: bytes) -> None:
        nonlocal rename, current
        entry = decode(line)
        path = entry["path"]
        added = b""  # the keys this line gains at its end, when the entry is settled by appending them
        if tag == b"N":
            if rename is not None and rename["path"] == path:  # its bytes are in the parent chain, not here
                entry.update(rename)
                writer.write(entry)
                rename = next(renamed, None)
                return
            added = new_here if "change" not in entry and "in" not in entry else None
            entry["change"], entry["in"] = "new", chain.backup_id
        if current is None or current[0] != path:  # not where the archive has it: gone before tar read it
            return
        _, kind, size, sha256, link = scanned = current
        current = next(members, None)
        if path in link_targets:
            targets[path] = scanned
        if entry["type"] != "file":
            if link is not None and link != entry.get("link"):  # the link tar stored, should it have moved since the walk
                entry["link"] = link
            elif added == b"":
                writer.write_line(line)  # nothing changed: the line as the first pass encoded it
                return
            writer.write(entry)
            return
        if kind == "hardlink":
            target = targets.get(link)
            if target is None or target[3] is None:
                return
            entry["member"] = link
            added = None
            size, sha256 = target[2], target[3]
        elif kind != "file":
            return
        if added is not None and size == entry["size"] and "sha256" not in entry and sha256.isascii():
            # The entry gains keys at its end, its size stays: the line the encoder would write, without
            # encoding the whole entry again (a key added to a dict is encoded last; an ASCII value is
            # written the same by both encoders).
            writer.write_line(line[:-2] + added + b',"sha256":' + orjson.dumps(sha256) + b"}\n")
            return
        entry["size"], entry["sha256"] = size, sha256
        writer.write(entry)

    link_targets = archive.link_targets
    writer = ListingWriter(chain.listing_out)
    try:
        with open(workdir / DRAFT, "rb", buffering=BUFFER) as draft, \
             open(archive.path, "rb", buffering=BUFFER) as spool:
            members = map(decode, spool)
            current = next(members, None)
            if full:  # every path is a member: each line is matched with the archive
                for line in draft:
                    settle(b"?", line)
            else:
                at = settled = 0
                for offset, tag in _marks(workdir / MARKS):
                    _copy(draft, offset - at, writer)  # final lines, not in the archive: copied as they are
                    line = draft.readline()
                    at = offset + len(line)
                    settle(tag, line)
                    settled += 1
                _copy(draft, None, writer)
                writer.counted(draft_lines - settled)
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
    """Hand ``size`` bytes of whole draft lines (None: the rest of the draft) to the listing, a block at a time.

    Not counted here: counting the newlines of every block cost as much as compressing it.
    """
    while size is None or size > 0:
        block = draft.read(BUFFER if size is None else min(size, BUFFER))
        if not block:
            break
        if size is not None:
            size -= len(block)
        writer.write_lines(block, 0)

