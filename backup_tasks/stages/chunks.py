"""Handing out decoded chunks to ``readinto`` callers, a piece at a time.

The read-back's readers (the read-ahead hasher, the framed zstd reader) each hold the chunk
they last decoded (``_cur``) and a position in it (``_pos``), and know how to move to the
next one (``_next``); a ``readinto`` copies from there into the caller's buffer, whatever
shape the caller's buffer has.
"""

from __future__ import annotations


class ChunkCursor:
    """``readinto`` over ``_cur``/``_pos``/``_next``; ``_handed_out(n)`` hears of every byte given."""

    _cur: bytes | memoryview
    _pos: int

    def _next(self) -> bool:
        """Move ``_cur`` to the next chunk (``_pos`` to 0); False at the end."""
        raise NotImplementedError

    def _handed_out(self, n: int) -> None:
        """Called with the bytes each ``readinto`` gave; nothing by default."""

    def readinto(self, buf) -> int:
        if self._pos >= len(self._cur) and not self._next():
            return 0
        view = memoryview(buf).cast("B")
        n = min(len(view), len(self._cur) - self._pos)
        view[:n] = memoryview(self._cur)[self._pos:self._pos + n]
        self._pos += n
        self._handed_out(n)
        return n
