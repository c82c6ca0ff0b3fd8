"""The time span of a binary log file: the timestamps in its event headers.

A binlog (v4) is a 4-byte magic followed by events, each with a 19-byte header:
timestamp (4, seconds, little-endian), type (1), server id (4), event size (4), next
position (4), flags (2). Walking the headers by event size reads only headers, so a
1 GiB log costs a few thousand small reads, not its size in memory.
"""

from __future__ import annotations

import struct
from datetime import datetime, timezone
from pathlib import Path

from backup_tasks.errors import SourceError

MAGIC = b"\xfebin"
_HEADER = struct.Struct("<IBIII H")


def span(path: Path) -> tuple[datetime, datetime, int]:
    """(first event time, last event time, number of events) of the binlog at ``path``."""
    first = last = None
    events = 0
    size = path.stat().st_size
    with open(path, "rb") as fh:
        if fh.read(4) != MAGIC:
            raise SourceError(f"{path.name} is not a binary log (no binlog magic at its start)", "check the server's log_bin setting")
        pos = 4
        while pos + _HEADER.size <= size:
            fh.seek(pos)
            ts, _type, _server, length, _next, _flags = _HEADER.unpack(fh.read(_HEADER.size))
            if length < _HEADER.size:
                raise SourceError(f"{path.name}: a broken event header at position {pos}", "copy the log again")
            if ts:
                first = ts if first is None else first
                last = ts if last is None else max(last, ts)
            events += 1
            pos += length
    if first is None:
        raise SourceError(f"{path.name} holds no events", "copy the log again")
    as_dt = lambda t: datetime.fromtimestamp(t, tz=timezone.utc)  # noqa: E731
    return as_dt(first), as_dt(last), events
