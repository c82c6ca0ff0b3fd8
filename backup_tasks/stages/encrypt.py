"""Encryption stage: the age format to X25519 recipients, streamed by pyrage.

age was chosen so that ``age -d -i KEY FILE | zstd -d`` restores without our code.
"""

from __future__ import annotations

import fcntl
import io
import os
import threading
from typing import BinaryIO

import pyrage
from pyrage import x25519

from backup_tasks.errors import VerificationFailed

SUFFIX = ".age"


def encrypt(src: BinaryIO, dst: BinaryIO, recipients: list[x25519.Recipient]) -> None:
    """Encrypt ``src`` into ``dst``; an error of either stream comes out as raised, not as pyrage's EncryptError.

    pyrage turns whatever the streams raise into a string inside its own error, which
    would hide a typed error of the reader (a staged file that fails its seal, or whose
    producer is gone) or the writer's ENOSPC behind "unexpected".
    """
    reader, writer = _Remembering(src), _Remembering(dst)
    try:
        # both remember below a buffer: pyrage's 8 KiB reads and 64 KiB writes reach the Python
        # streams (follower, progress, hashing, the file) once per MiB
        out = io.BufferedWriter(_Raw(writer), BUFFER_BYTES)
        pyrage.encrypt_io(buffered(reader), out, recipients)
        out.flush()
    except Exception:
        for side in (reader, writer):  # a full disk under the output must still read as ENOSPC
            if side.error is not None:
                raise side.error from None
        raise


class _Remembering:
    """A file object that keeps the exception its inner stream raised."""

    def __init__(self, inner: BinaryIO) -> None:
        self._inner, self.error = inner, None

    def _keeping(self, call, *args):
        try:
            return call(*args)
        except Exception as exc:
            self.error = exc
            raise

    def read(self, n: int = -1) -> bytes:
        return self._keeping(self._inner.read, n)

    def readinto(self, buf) -> int:
        return self._keeping(self._inner.readinto, buf)

    def write(self, data) -> int:
        return self._keeping(self._inner.write, data)

    def flush(self) -> None:
        self._inner.flush()

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True


#: pyrage reads and writes 8 KiB at a time; a buffer of this size between it and a Python stream
#: turns 128 calls through Python wrappers (follower, progress, hashing) into one
BUFFER_BYTES = 1 << 20


class _Raw(io.RawIOBase):
    """Any object with ``read(n)`` or ``write(data)`` as the raw stream under an ``io.BufferedReader`` or
    ``io.BufferedWriter``; closing it leaves the inner one open."""

    def __init__(self, inner: BinaryIO) -> None:
        self._inner = inner

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        data = self._inner.read(len(buf))
        buf[:len(data)] = data
        return len(data)

    def write(self, data) -> int:
        self._inner.write(data)
        return len(data)


def buffered(src: BinaryIO) -> BinaryIO:
    """``src`` read in 1 MiB pieces whatever size pyrage asks for; an error of ``src`` comes out unchanged."""
    return io.BufferedReader(_Raw(src), BUFFER_BYTES)


#: a pipe of 1 MiB (Linux's default limit for unprivileged processes) instead of 64 KiB: each
#: side then runs sixteen times longer per wake-up, which is what bounds a chained decrypt → encrypt
PIPE_BYTES = 1 << 20


def widen_pipe(fd: int) -> None:
    try:
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
    except (OSError, AttributeError):  # another OS, or a lower limit: the default pipe works, only slower
        pass


class _PumpedReader:
    """A readable stream over what a push-style pyrage call writes.

    pyrage only offers push-style ``encrypt_io``/``decrypt_io(src, dst)``; a thread
    pushes into a pipe and the caller pulls from it, so the result streams into the next
    reader with a pipe buffer's worth of memory. An error in the thread surfaces on the reader.
    """

    def __init__(self, push, src: BinaryIO, keys, *, name: str) -> None:
        read_fd, write_fd = os.pipe()
        widen_pipe(write_fd)
        self._file = os.fdopen(read_fd, "rb", buffering=0)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._pump, args=(push, src, keys, write_fd), daemon=True, name=name)
        self._thread.start()

    def _pump(self, push, src: BinaryIO, keys, write_fd: int) -> None:
        # FileIO's write releases the GIL while the reader catches up, and the buffer makes
        # pyrage's 8 KiB writes one system call per MiB
        out = os.fdopen(write_fd, "wb", buffering=BUFFER_BYTES)
        try:
            push(buffered(src), out, keys)
        except BaseException as exc:  # reported to the reading side in read()
            self._error = exc
        finally:
            try:
                out.close()
            except OSError:  # the reader closed its end first (it gave up): nothing is waiting for the rest
                pass

    def read(self, n: int = -1) -> bytes:
        data = self._file.read(n) if n is not None and n >= 0 else self._file.readall()
        if not data:
            self._thread.join()
            self._raise_if_failed()
        return data

    def readinto(self, buf) -> int:
        n = self._file.readinto(buf)
        if not n:
            self._thread.join()
            self._raise_if_failed()
        return n

    def readable(self) -> bool:
        return True

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        self._file.close()  # a blocked writer gets EPIPE and the thread ends
        self._thread.join(timeout=10)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class DecryptingReader(_PumpedReader):
    """A readable plaintext stream over an age ciphertext stream."""

    def __init__(self, src: BinaryIO, identities: list[x25519.Identity], *, what: str) -> None:
        self._what = what
        super().__init__(pyrage.decrypt_io, src, identities, name="age-decrypt")

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise VerificationFailed(
                f"{self._what}: age decryption failed ({self._error})",
                "the stored object is damaged or was not encrypted to this identity; try another location or backup",
                check="decrypt",
            ) from self._error


class EncryptingReader(_PumpedReader):
    """A readable age ciphertext stream over a plaintext stream, to ``recipients``.

    Re-encryption chains it after a DecryptingReader, so an object moves from one key
    to another without its plaintext ever touching a disk.
    """

    def __init__(self, src: BinaryIO, recipients: list[x25519.Recipient]) -> None:
        super().__init__(pyrage.encrypt_io, src, recipients, name="age-encrypt")
