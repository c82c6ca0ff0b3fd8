"""A reader that hands every chunk it returns to a callback as well.

Two restores need to see a stream pass by while something else reads it: the files
restore scans the archive's headers while tarfile extracts, and a parallel pg_restore
copies the plaintext into its seekable file while a streaming pg_restore loads it.
"""

from __future__ import annotations

from typing import BinaryIO, Callable

from backup_tasks.defaults import CHUNK_SIZE


class TeeReader:
    """Read-only: ``read`` returns what ``inner`` gives and passes the same bytes to ``on_chunk``."""

    def __init__(self, inner: BinaryIO, on_chunk: Callable[[bytes], object]) -> None:
        self._inner, self._on_chunk = inner, on_chunk

    def read(self, size: int = -1) -> bytes:
        data = self._inner.read(size)
        if data:
            self._on_chunk(data)
        return data

    def drain(self) -> None:
        """Read what the consumer left unread, so ``on_chunk`` sees the whole stream."""
        while self.read(CHUNK_SIZE):
            pass
