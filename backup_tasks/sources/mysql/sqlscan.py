"""What an SQL dump stream holds, read once as it passes: the tables it creates, a summary, its trailer.

A verify needs to know the dump is whole (the tool's ``-- Dump completed`` trailer) and
creates every table of the manifest; a dry-run restore shows what it would create. Both
read the plaintext stream in chunks and never hold it in memory: a statement cut by a
chunk boundary is carried over to the next chunk.
"""

from __future__ import annotations

import re
from typing import BinaryIO

from backup_tasks import defaults

TRAILER = b"-- Dump completed"
#: with its line's newline in front, found by bytes.find (a fast substring search) before the
#: regex looks; ``^`` with re.M has the regex try every byte (2 CPU-seconds for a 220 MB dump)
_CREATE_PREFIX = b"\nCREATE TABLE `"
_CREATE_TABLE = re.compile(rb"\nCREATE TABLE `((?:[^`]|``)+)`")
#: longer than any match of _CREATE_TABLE (a name is at most 64 characters of 4 bytes, each maybe doubled)
_LONGEST_MATCH = 1024


def scan(stream: BinaryIO) -> tuple[set[str], bytes, int]:
    """Tables the SQL stream creates, its last 4 KiB, and its size; one pass in 1 MiB chunks."""
    found: set[str] = set()
    carry = b"\n"  # the first line starts a line too, as if a newline came before it
    tail = b""
    size = 0
    while True:
        chunk = stream.read(defaults.CHUNK_SIZE)
        if not chunk:
            break
        size += len(chunk)
        block = carry + chunk
        # The last line may go on in the next chunk: it is looked at there, with its newline
        # in front. A last line longer than any match (a long row) cannot hide a match cut by
        # the chunk's end, so it is looked at now and not carried: a huge row never grows the carry.
        cut = block.rfind(b"\n")
        if cut < 0 or len(block) - cut > _LONGEST_MATCH:
            cut = len(block)
        _tables_in(block, cut, found)
        carry = block[cut:]
        tail = (tail + chunk[-4096:])[-4096:]
    _tables_in(carry, len(carry), found)
    return found, tail, size


def _tables_in(block: bytes, end: int, found: set[str]) -> None:
    """Add the tables created in ``block[:end]`` to ``found``."""
    at = block.find(_CREATE_PREFIX, 0, end)
    while at >= 0:
        m = _CREATE_TABLE.match(block, at, end)
        if m:
            found.add(m.group(1).replace(b"``", b"`").decode("utf-8", "replace"))
        at = block.find(_CREATE_PREFIX, at + 1, end)


_NAME = rb"(?:`((?:[^`]|``)+)`|([^\s`(]+))"  # a name as the server wrote it: quoted or not
_SUMMARY = {
    "tables": re.compile(rb"^CREATE TABLE " + _NAME, re.M),
    "insert_statements": re.compile(rb"^INSERT INTO " + _NAME, re.M),
    "views": re.compile(rb"^/\*!50001 VIEW " + _NAME, re.M),
    "triggers": re.compile(rb"^/\*!50003 CREATE\*/ /\*!50017 DEFINER=\S+\*/ /\*!50003 TRIGGER " + _NAME, re.M),
    "routines": re.compile(rb"^CREATE\s.*?(?:PROCEDURE|FUNCTION) " + _NAME, re.M),
    "events": re.compile(rb"^/\*!50106 CREATE\*/ /\*!50117 DEFINER=\S+\*/ /\*!50106 EVENT " + _NAME, re.M),
}


def summarize(stream: BinaryIO) -> dict:
    """A statement summary of the SQL stream (what ``--dry-run`` shows): objects by kind, INSERTs per table."""
    seen: dict[str, dict[str, int]] = {k: {} for k in _SUMMARY}
    carry = b""
    tail = b""
    while True:
        chunk = stream.read(defaults.CHUNK_SIZE)
        block = carry + chunk
        cut = block.rfind(b"\n") + 1 if chunk else len(block)
        for kind, rx in _SUMMARY.items():
            for m in rx.finditer(block, 0, cut):
                name = (m.group(1).replace(b"``", b"`") if m.group(1) is not None else m.group(2)).decode("utf-8", "replace")
                seen[kind][name] = seen[kind].get(name, 0) + 1
        carry = block[cut:]
        tail = (tail + chunk)[-4096:]
        if not chunk:
            break
    return {
        "objects": {k: sorted(v) for k, v in seen.items() if k != "insert_statements"},
        "insert_statements": seen["insert_statements"],
        "complete": TRAILER in tail,
    }
