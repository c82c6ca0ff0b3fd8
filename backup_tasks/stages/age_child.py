"""One side of a re-encryption, as a process of its own: ``python -m backup_tasks.stages.age_child decrypt|encrypt FD [in] [out]``.

pyrage holds the GIL while it works, so age decryption and encryption in two threads of
one process take turns instead of running side by side. In two processes (reencrypt_pipe.py
starts them, stdout of one into stdin of the other) each has a core. The keys come through
the inherited pipe ``FD``, one per line, never argv or the environment, where ``ps`` and
``/proc`` would show them. Data passes on stdin and stdout. A failure is one line on
stderr (pyrage's message, which never holds key material) and exit status 1.

With ``in`` and/or ``out``, the bytes read and/or written are hashed here, on this
process's core, as they pass (the parent would otherwise hash them in one of its own
threads, a second pass over the same bytes competing for its GIL); on success the last
line on stderr is ``digests in=SIZE:SHA256 out=SIZE:SHA256`` (``-`` for one not asked for).
"""

from __future__ import annotations

import hashlib
import os
import sys

import pyrage
from pyrage import x25519

#: the unit of reading stdin and writing stdout: 64 KiB measured a little faster than 256 KiB and
#: 1 MiB (the next process starts sooner), and is still 8 of pyrage's calls per system call
BLOCK_BYTES = 1 << 16


class _Digest:
    def __init__(self) -> None:
        self.hash = hashlib.sha256()
        self.size = 0

    def update(self, data) -> None:
        self.hash.update(data)
        self.size += len(data)

    def __str__(self) -> str:
        return f"{self.size}:{self.hash.hexdigest()}"


class _In:
    """stdin as pyrage's reader, filled a block at a time and hashed per block when asked to.

    pyrage reads 8 KiB per call: serving those from a larger block means one system call
    and one hash update per block instead of per call.
    """

    def __init__(self, digest: _Digest | None) -> None:
        self._block = bytearray(BLOCK_BYTES)
        self._view = memoryview(self._block)
        self._start = self._end = 0
        self._digest = digest

    def _fill(self) -> bool:
        n = os.readv(0, [self._block])
        if n and self._digest is not None:
            self._digest.update(self._view[:n])
        self._start, self._end = 0, n
        return n > 0

    def read(self, n: int = -1) -> bytes:
        if self._start == self._end and not self._fill():
            return b""
        take = self._end - self._start if n is None or n < 0 else min(n, self._end - self._start)
        data = bytes(self._view[self._start:self._start + take])
        self._start += take
        return data

    def readinto(self, buf) -> int:
        if self._start == self._end and not self._fill():
            return 0
        take = min(len(buf), self._end - self._start)
        memoryview(buf)[:take] = self._view[self._start:self._start + take]
        self._start += take
        return take

    def readable(self) -> bool:
        return True


class _Out:
    """stdout as pyrage's writer, gathered into blocks (pyrage writes 8 KiB per call).

    One write per block wakes the next process once per block instead of per call, and
    the block is hashed at once when asked to.
    """

    def __init__(self, digest: _Digest | None) -> None:
        self._block = bytearray(BLOCK_BYTES)
        self._view = memoryview(self._block)
        self._used = 0
        self._digest = digest

    def write(self, data) -> int:
        n = len(data)
        if self._used + n > BLOCK_BYTES:
            self.flush()
        if n >= BLOCK_BYTES:
            self._emit(memoryview(data))
        else:
            self._view[self._used:self._used + n] = data
            self._used += n
        return n

    def flush(self) -> None:
        if self._used:
            self._emit(self._view[:self._used])
            self._used = 0

    def _emit(self, view: memoryview) -> None:
        if self._digest is not None:
            self._digest.update(view)
        while view:
            view = view[os.write(1, view):]


def main(argv: list[str]) -> int:
    mode, keys_fd, hashed = argv[0], int(argv[1]), set(argv[2:])
    with os.fdopen(keys_fd, "rb") as fh:
        keys = fh.read().decode().split()
    seen_in = _Digest() if "in" in hashed else None
    seen_out = _Digest() if "out" in hashed else None
    source, out = _In(seen_in), _Out(seen_out)
    try:
        if mode == "decrypt":
            pyrage.decrypt_io(source, out, [x25519.Identity.from_str(k) for k in keys])
        elif mode == "encrypt":
            pyrage.encrypt_io(source, out, [x25519.Recipient.from_str(k) for k in keys])
        else:
            raise ValueError(f"unknown mode {mode!r}")
        out.flush()
    except BrokenPipeError:
        sys.stderr.write("the reading side closed the pipe\n")
        return 1
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which raises a typed error
        sys.stderr.write(f"{type(exc).__name__}: {exc}\n")
        return 1
    if seen_in is not None:  # what pyrage left unread (nothing, for a whole age file) counts too
        while source.read():
            pass
    if hashed:
        sys.stderr.write(f"digests in={seen_in or '-'} out={seen_out or '-'}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
