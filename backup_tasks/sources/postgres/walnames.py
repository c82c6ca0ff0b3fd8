"""PostgreSQL's WAL file names and positions, as plain arithmetic.

A segment's name is three 8-digit hex numbers: timeline, then the segment number split
in two (the "log" and the segment within it). Knowing which segment holds an LSN and
which timeline PostgreSQL will ask for at each segment is what lets the restorable
window be computed from names alone, without reading a byte of WAL.
"""

from __future__ import annotations

import re

#: PostgreSQL's default, and what every cluster built with default options uses
DEFAULT_SEGMENT_SIZE = 16 * 1024 * 1024

SEGMENT_RE = re.compile(r"^([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})$")
HISTORY_RE = re.compile(r"^([0-9A-F]{8})\.history$")
PARTIAL_RE = re.compile(r"^([0-9A-F]{24})\.partial$")
BACKUP_LABEL_RE = re.compile(r"^[0-9A-F]{24}\.[0-9A-F]{8}\.backup$")


def kind_of(name: str) -> str | None:
    """``segment``, ``history``, ``partial`` or ``backup`` (a backup history file), or None for anything else."""
    if SEGMENT_RE.match(name):
        return "segment"
    if HISTORY_RE.match(name):
        return "history"
    if PARTIAL_RE.match(name):
        return "partial"
    if BACKUP_LABEL_RE.match(name):
        return "backup"
    return None


def parse_lsn(text: str) -> int:
    """``0/3000028`` → 50331688."""
    hi, _, lo = text.strip().partition("/")
    return (int(hi, 16) << 32) | int(lo, 16)


def format_lsn(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def segments_per_log(segment_size: int) -> int:
    return 0x100000000 // segment_size


def segno_of_lsn(lsn: int, segment_size: int = DEFAULT_SEGMENT_SIZE) -> int:
    return lsn // segment_size


def segment_name(timeline: int, segno: int, segment_size: int = DEFAULT_SEGMENT_SIZE) -> str:
    per = segments_per_log(segment_size)
    return f"{timeline:08X}{segno // per:08X}{segno % per:08X}"


def parse_segment(name: str, segment_size: int = DEFAULT_SEGMENT_SIZE) -> tuple[int, int]:
    """(timeline, segment number) of a segment name."""
    match = SEGMENT_RE.match(name)
    if not match:
        raise ValueError(f"{name!r} is not a WAL segment name")
    tli, log, seg = (int(g, 16) for g in match.groups())
    return tli, log * segments_per_log(segment_size) + seg


def history_timeline(name: str) -> int:
    match = HISTORY_RE.match(name)
    if not match:
        raise ValueError(f"{name!r} is not a timeline history file name")
    return int(match.group(1), 16)


def parse_history(text: str) -> list[tuple[int, int]]:
    """The (parent timeline, switch LSN) lines of a ``.history`` file, oldest first."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        out.append((int(fields[0]), parse_lsn(fields[1])))
    return out


def timeline_path(timeline: int, history: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """(timeline, first LSN on it) along the way to ``timeline``, oldest first.

    Timeline 1 begins at 0; each later one at its parent's switch point.
    """
    path, begin = [], 0
    for parent, switch in history:
        path.append((parent, begin))
        begin = switch
    path.append((timeline, begin))
    return path


def timeline_for_segment(segno: int, path: list[tuple[int, int]], segment_size: int = DEFAULT_SEGMENT_SIZE) -> int:
    """The timeline whose copy of segment ``segno`` recovery reads: the newest one begun at or before it.

    That is PostgreSQL's own rule: the segment holding a switch point is read from the new
    timeline, whose copy has both the old timeline's records and the new ones.
    """
    chosen = path[0][0]
    for tli, begin in path:
        if segno_of_lsn(begin, segment_size) <= segno:
            chosen = tli
    return chosen
