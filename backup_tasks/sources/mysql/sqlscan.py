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
_CREATE_TABLE = re.compile(rb"^CREATE TABLE `((?:[^`]|``)+)`", re.M)


def scan(stream: BinaryIO) -> tuple[set[str], bytes, int]:
    """Tables the SQL stream creates, its last 4 KiB, and its size; one pass in 1 MiB chunks."""
    found: set[str] = set()
    carry = b""
    tail = b""
    size = 0
    while True:
        chunk = stream.read(defaults.CHUNK_SIZE)
        if not chunk:
            break
        size += len(chunk)
        block = carry + chunk
        cut = block.rfind(b"\n") + 1
        for m in _CREATE_TABLE.finditer(block, 0, cut):
            found.add(m.group(1).replace(b"``", b"`").decode("utf-8", "replace"))
        carry = block[cut:]
        tail = (tail + chunk)[-4096:]
    for m in _CREATE_TABLE.finditer(carry):
        found.add(m.group(1).replace(b"``", b"`").decode("utf-8", "replace"))
    return found, tail, size


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
