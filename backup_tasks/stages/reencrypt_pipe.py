"""Re-encryption as a readable stream, decrypt and encrypt each in a process of its own.

``ReencryptingReader(src, identities, recipients)`` reads the old age object from
``src`` and gives the new one: a thread feeds ``src`` into a decrypting child process,
whose stdout is the stdin of an encrypting one, whose stdout this reader reads. The
plaintext only ever passes through two pipes between the children, never a disk or this
process. Measured on a 256 MiB object (benchmarks/reencrypt.py), two processes take about
half the time of two threads, which pyrage serializes on the GIL (encrypt.py's readers).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from typing import BinaryIO

from backup_tasks import defaults
from backup_tasks.errors import PermanentError, VerificationFailed
from backup_tasks.stages.encrypt import widen_pipe


def _keys_pipe(keys: list[str]) -> int:
    """A pipe holding ``keys`` one per line; returns its read end (the child inherits it)."""
    read_fd, write_fd = os.pipe()
    with os.fdopen(write_fd, "wb") as fh:  # a few hundred bytes: fits the pipe's buffer, never blocks
        fh.write("".join(f"{k}\n" for k in keys).encode())
    return read_fd


def _spawn(mode: str, keys: list[str], stdin, stdout) -> subprocess.Popen:
    keys_fd = _keys_pipe(keys)
    try:
        return subprocess.Popen([sys.executable, "-m", "backup_tasks.stages.age_child", mode, str(keys_fd)],
                                stdin=stdin, stdout=stdout, stderr=subprocess.PIPE, pass_fds=(keys_fd,))
    finally:
        os.close(keys_fd)


class ReencryptingReader:
    """A readable stream of ``src`` (age, to ``identities``) re-encrypted to ``recipients``.

    A wrong identity or a damaged object raises VerificationFailed from ``read`` at the
    end; ``close`` stops both children whatever state they are in.
    """

    def __init__(self, src: BinaryIO, identities, recipients, *, what: str) -> None:
        self._what = what
        self._src = src
        self._error: BaseException | None = None
        self._decrypt = _spawn("decrypt", [str(i) for i in identities], subprocess.PIPE, subprocess.PIPE)
        try:
            self._encrypt = _spawn("encrypt", [str(r) for r in recipients], self._decrypt.stdout, subprocess.PIPE)
        except BaseException:
            self._decrypt.kill()
            raise
        for fh in (self._decrypt.stdin, self._decrypt.stdout, self._encrypt.stdout):
            widen_pipe(fh.fileno())
        self._decrypt.stdout.close()  # the encrypting child holds it now
        self._out = self._encrypt.stdout
        self._feeder = threading.Thread(target=self._feed, daemon=True, name="age-reencrypt-feed")
        self._feeder.start()

    def _feed(self) -> None:
        sink = self._decrypt.stdin
        try:
            while chunk := self._src.read(defaults.CHUNK_SIZE):
                sink.write(chunk)
        except BrokenPipeError:
            pass  # the decrypting child stopped early: its own error says why
        except BaseException as exc:  # a read error of the source: raised on the reading side
            self._error = exc
        finally:
            try:
                sink.close()
            except BrokenPipeError:
                pass

    def read(self, n: int = -1) -> bytes:
        data = self._out.read(n) if n is not None and n >= 0 else self._out.read()
        if not data:
            self._finish()
        return data

    def readinto(self, buf) -> int:
        n = self._out.readinto(buf)
        if not n:
            self._finish()
        return n

    def readable(self) -> bool:
        return True

    def _finish(self) -> None:
        self._feeder.join()
        decrypt_err = self._decrypt.stderr.read().decode(errors="replace").strip()
        encrypt_err = self._encrypt.stderr.read().decode(errors="replace").strip()
        decrypted, encrypted = self._decrypt.wait(), self._encrypt.wait()
        if self._error is not None:
            raise self._error
        if decrypted != 0:
            raise VerificationFailed(
                f"{self._what}: age decryption failed ({decrypt_err.splitlines()[-1] if decrypt_err else f'exit {decrypted}'})",
                "the stored object is damaged or was not encrypted to this identity; try another location or backup",
                check="decrypt")
        if encrypted != 0:
            raise PermanentError(f"{self._what}: age encryption failed ({encrypt_err or f'exit {encrypted}'})",
                                 "check the recipients in [settings] and that the worker can start Python processes")

    def close(self) -> None:
        for child in (self._decrypt, self._encrypt):
            if child.poll() is None:
                child.kill()
        for child in (self._decrypt, self._encrypt):
            child.wait()
            child.stderr.close()
        self._out.close()
        self._feeder.join(timeout=10)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
