"""The binary log coordinates ``mariadb-dump --master-data=2 --gtid`` writes into its own output.

They are comments: ``-- CHANGE MASTER TO MASTER_LOG_FILE='f', MASTER_LOG_POS=n;`` near
the top and ``-- SET GLOBAL gtid_slave_pos='d-s-n';`` near the end. They are the
position of the tool's own consistent snapshot, so replay for point-in-time recovery
starts exactly there. Read as the stream passes, one line at a time across chunk
boundaries, without holding the stream.
"""

from __future__ import annotations

import re

_FILE_POS = re.compile(rb"^-- CHANGE MASTER TO MASTER_LOG_FILE='([^']+)', MASTER_LOG_POS=(\d+);$", re.M)
_GTID = re.compile(rb"^-- SET GLOBAL gtid_slave_pos='([^']*)';$", re.M)


class CoordinateWatch:
    """Fed every chunk of the dump's output; ``result()`` gives file, position and GTID (None for what was absent)."""

    def __init__(self) -> None:
        self.file: str | None = None
        self.position: int | None = None
        self.gtid: str | None = None
        self._carry = b""

    def __call__(self, chunk: bytes) -> None:
        block = self._carry + chunk
        cut = block.rfind(b"\n") + 1
        if cut:
            self._scan(block, cut)  # with an end, not a slice: no copy of every chunk
        # a line longer than this is a row of data, never one of the comments looked for
        self._carry = block[cut:][-4096:]

    def _scan(self, lines: bytes, end: int) -> None:
        if self.file is None and lines.find(b"-- CHANGE MASTER TO MASTER_LOG_FILE=", 0, end) >= 0:
            m = _FILE_POS.search(lines, 0, end)
            if m:
                self.file, self.position = m.group(1).decode(), int(m.group(2))
        if lines.find(b"gtid_slave_pos", 0, end) >= 0:
            m = _GTID.search(lines, 0, end)
            if m:
                self.gtid = m.group(1).decode()

    def result(self) -> dict:
        self._scan(self._carry, len(self._carry))
        return {"file": self.file, "position": self.position, "gtid": self.gtid}
