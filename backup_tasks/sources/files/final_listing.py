"""The second pass of a files dump: the draft listing and tar's scanned members, read side by side, become the tree listing.

The first pass (changes.py) wrote a draft line per path in tree order and the member
list tar archived in that same order; tar's output was scanned as it passed, each member
spooled to a file. Reading the draft and the spool in step gives each archived file the
size and sha256 the scan measured without holding either side in memory.

An incremental's second pass runs beside tar (``BesideTar``), taking each member as the
scan hears it: while the dump's thread waits for tar, the draft's unchanged lines are
copied and compressed. A full's waits for tar: every line is a member, and the pass
would only follow the scan.
"""

from __future__ import annotations

import queue
import threading
from contextlib import contextmanager
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

    def __init__(self, path: Path, follow: bool = False) -> None:
        self.path = path
        self._out = open(path, "wb", buffering=BUFFER)
        self.entries = self.files = self.bytes = 0
        self.link_targets: set[str] = set()
        #: with ``follow``, each record also goes to the second pass running beside tar (bounded: tar's
        #: scan waits for a pass that falls far behind, rather than the records piling up in memory)
        self._follow: queue.Queue | None = queue.Queue(4096) if follow else None
        self._ended = False  # a followed spool's end was taken

    def add(self, entry: dict) -> None:
        kind = entry["type"]
        record = [entry["path"], kind, entry["size"], entry.get("sha256"), entry.get("link")]
        try:
            self._out.write(orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE))
        except TypeError:  # a name that is not UTF-8
            self._out.write(encode(record) + b"\n")
        if self._follow is not None:
            self._follow.put(record)
        self.entries += 1
        if kind == "file":
            self.files += 1
            self.bytes += entry["size"]
        elif kind == "hardlink":
            self.link_targets.add(entry["link"])

    def close(self) -> None:
        self._out.close()
        if self._follow is not None:
            self._follow.put(None)

    @contextmanager
    def records(self, live: bool) -> Iterator[Iterator[list]]:
        """The records in order: as they are added (``live``, for a spool that follows), or read back from the file."""
        if live:
            yield self._followed()
            return
        with open(self.path, "rb", buffering=BUFFER) as spool:
            yield map(decode, spool)

    def _followed(self) -> Iterator[list]:
        while (record := self._follow.get()) is not None:
            yield record
        self._ended = True

    def drain(self) -> None:
        """Take the rest of the records of a followed spool, so that tar's scan never waits on a pass that stopped."""
        if not self._ended:
            for _ in self._followed():
                pass


class _LinkTargetMissed(Exception):
    """A pass beside tar met a hard link to a member it did not keep (linked only after the walk); the pass is done again after tar."""


def second_pass(workdir: Path, archive: ArchiveSpool, chain: Chain, *, full: bool = False, draft_lines: int,
                live: bool = False) -> int:
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
    ``live``: the members are taken as tar's scan adds them (``BesideTar``); the hard
    links' targets are then not all known in advance, so a file's record is kept when
    its draft line says it has several names, and a link to one that did not say so
    raises _LinkTargetMissed.
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
        if entry.get("nlink") if live else path in link_targets:  # live: the scan may not have reached the link yet
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
            if target is None and live:
                raise _LinkTargetMissed
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
        with open(workdir / DRAFT, "rb", buffering=BUFFER) as draft, archive.records(live) as members:
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


class BesideTar:
    """An incremental's second pass, started beside tar on a spool that follows (``ArchiveSpool(follow=True)``).

    ``join`` once the spool is closed (tar done or failed): the pass ends with the spool
    whatever happened. ``result`` then gives the listing's entry count or raises what the
    pass raised. A pass that met a hard link it could not resolve live (a second name
    made after the walk) is done again from the spool's file, as it was before it ran
    beside tar.
    """

    def __init__(self, workdir: Path, archive: ArchiveSpool, chain: Chain, *, draft_lines: int) -> None:
        self._again = lambda: second_pass(workdir, archive, chain, draft_lines=draft_lines)
        self._outcome: dict = {}

        def run() -> None:
            try:
                self._outcome["count"] = second_pass(workdir, archive, chain, draft_lines=draft_lines, live=True)
            except BaseException as exc:  # handed to the dump's thread by result()
                self._outcome["error"] = exc
            finally:
                archive.drain()  # what the pass did not take: tar's scan must never wait on it

        self._thread = threading.Thread(target=run, name="second-pass", daemon=True)
        self._thread.start()

    def join(self) -> None:
        self._thread.join()

    def result(self) -> int:
        self.join()
        error = self._outcome.get("error")
        if isinstance(error, _LinkTargetMissed):
            return self._again()
        if error is not None:
            raise error
        return self._outcome["count"]


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

