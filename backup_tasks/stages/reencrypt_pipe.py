"""Re-encryption as a readable stream, decrypt and encrypt each in a process of its own.

``ReencryptingReader(src, identities, recipients)`` reads the old age object from
``src`` and gives the new one: ``src`` goes into a decrypting child process (straight
as its stdin when it is a file on disk, else through a thread that copies it into a
pipe), whose stdout is the stdin of an encrypting one, whose stdout this reader reads.
The plaintext only ever passes through the pipe between the children, never a disk or
this process. ``decrypted_digest`` reads an age object through one decrypting child
and keeps nothing but hashes: the read-back that proves a new object decrypts.
``DecryptingChild`` is one decrypting child as a readable stream: how verify and restore
read a large backup back, so that their own threads keep the GIL while it decrypts.

The children hash what passes when asked (age_child.py), each on its own core: hashing
in this process would be one more pass in threads that share one GIL with the tier's
upload, which is what bounded re-encryption speed.
"""

from __future__ import annotations

import io
import os
import stat
import subprocess
import sys
import threading
from typing import BinaryIO

from backup_tasks import defaults
from backup_tasks.errors import PermanentError, VerificationFailed
from backup_tasks.stages.digest import HashingReader
from backup_tasks.stages.encrypt import widen_pipe

#: (size, sha256) of what passed a child
Digest = tuple[int, str]


def _keys_pipe(keys: list[str]) -> int:
    """A pipe holding ``keys`` one per line; returns its read end (the child inherits it)."""
    read_fd, write_fd = os.pipe()
    with os.fdopen(write_fd, "wb") as fh:  # a few hundred bytes: fits the pipe's buffer, never blocks
        fh.write("".join(f"{k}\n" for k in keys).encode())
    return read_fd


def _spawn(mode: str, keys: list[str], stdin, stdout, hashed: tuple[str, ...] = ()) -> subprocess.Popen:
    keys_fd = _keys_pipe(keys)
    try:
        return subprocess.Popen([sys.executable, "-m", "backup_tasks.stages.age_child", mode, str(keys_fd), *hashed],
                                stdin=stdin, stdout=stdout, stderr=subprocess.PIPE, pass_fds=(keys_fd,))
    finally:
        os.close(keys_fd)


def _file_fd(src) -> int | None:
    """The descriptor of ``src`` when a child can read it directly: an unread regular file, else None."""
    if not isinstance(src, (io.BufferedReader, io.FileIO)):
        return None
    try:
        fd = src.fileno()
        return fd if stat.S_ISREG(os.fstat(fd).st_mode) and src.tell() == 0 else None
    except (OSError, ValueError):
        return None


def _digests(stderr: str) -> dict[str, Digest]:
    """The child's closing ``digests in=SIZE:SHA out=SIZE:SHA`` line, as {"in": (size, sha), ...}."""
    lines = stderr.strip().splitlines()
    found: dict[str, Digest] = {}
    if lines and lines[-1].startswith("digests "):
        for part in lines[-1].split()[1:]:
            name, _, value = part.partition("=")
            if value != "-":
                size, _, sha = value.partition(":")
                found[name] = (int(size), sha)
    return found


class _Children:
    """Age children in a chain, the first fed from ``src``; stops them all on close."""

    def __init__(self, src: BinaryIO, *, what: str, direct: bool = True) -> None:
        self._what = what
        self._src = src
        self._fd = _file_fd(src) if direct else None
        self._error: BaseException | None = None
        self._feeder: threading.Thread | None = None
        self.children: list[subprocess.Popen] = []

    @property
    def first_stdin(self):
        return self._fd if self._fd is not None else subprocess.PIPE

    def start(self) -> None:
        first = self.children[0]
        if self._fd is None:
            widen_pipe(first.stdin.fileno())
            self._feeder = threading.Thread(target=self._feed, args=(first.stdin,), daemon=True, name="age-child-feed")
            self._feeder.start()

    def _feed(self, sink) -> None:
        # One buffer refilled in place: a new chunk per read, allocated and freed in this
        # thread, is what the allocator's per-thread heap keeps (tens of MiB over a long object).
        view = memoryview(bytearray(defaults.CHUNK_SIZE))
        try:
            while n := self._src.readinto(view):
                sink.write(view[:n])
        except BrokenPipeError:
            pass  # the decrypting child stopped early: its own error says why
        except BaseException as exc:  # a read error of the source: raised on the reading side
            self._error = exc
        finally:
            try:
                sink.close()
            except BrokenPipeError:
                pass

    def finish(self) -> list[dict[str, Digest]]:
        """Wait for every child; raise what went wrong first; return each child's digests."""
        if self._feeder is not None:
            self._feeder.join()
        errors = [child.stderr.read().decode(errors="replace").strip() for child in self.children]
        codes = [child.wait() for child in self.children]
        if self._error is not None:
            raise self._error
        for child_err, code, mode in zip(errors, codes, ("decrypt", "encrypt")):
            if code == 0:
                continue
            message = child_err.splitlines()[-1] if child_err else f"exit {code}"
            if mode == "decrypt":
                raise VerificationFailed(
                    f"{self._what}: age decryption failed ({message})",
                    "the stored object is damaged or was not encrypted to this identity; try another location or backup",
                    check="decrypt")
            raise PermanentError(f"{self._what}: age encryption failed ({message})",
                                 "check the recipients in [settings] and that the worker can start Python processes")
        return [_digests(e) for e in errors]

    def close(self) -> None:
        for child in self.children:
            if child.poll() is None:
                child.kill()
        for child in self.children:
            child.wait()
            child.stderr.close()
            if child.stdout is not None:
                child.stdout.close()
        if self._feeder is not None:
            self._feeder.join(timeout=10)


class _ChildOutput:
    """A readable stream of the last child's stdout; at its end, the children are waited for once
    (``_Children.finish``: what went wrong is raised) and ``_finished`` gets their digests."""

    _chain: _Children
    _out: BinaryIO

    def _start(self, out: BinaryIO) -> None:
        self._out, self._ended = out, False
        self._chain.start()

    def read(self, n: int = -1) -> bytes:
        data = self._out.read(n) if n is not None and n >= 0 else self._out.read()
        if not data:
            self._end()
        return data

    def readinto(self, buf) -> int:
        n = self._out.readinto(buf)
        if not n:
            self._end()
        return n

    def readable(self) -> bool:
        return True

    def _end(self) -> None:
        if not self._ended:
            self._ended = True
            self._finished(self._chain.finish())

    def _finished(self, digests: list[dict[str, Digest]]) -> None:
        pass

    def close(self) -> None:
        self._chain.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class ReencryptingReader(_ChildOutput):
    """A readable stream of ``src`` (age, to ``identities``) re-encrypted to ``recipients``.

    With ``digests``, once read to its end ``source_digest`` is the (size, sha256) of
    ``src`` and ``plain_digest`` that of the plaintext between the two children. A wrong
    identity or a damaged object raises VerificationFailed from ``read`` at the end;
    ``close`` stops both children whatever state they are in.
    """

    def __init__(self, src: BinaryIO, identities, recipients, *, what: str, digests: bool = False) -> None:
        self.source_digest: Digest | None = None
        self.plain_digest: Digest | None = None
        self._chain = _Children(src, what=what)
        hashed = ("in",) if digests else ()
        decrypt = _spawn("decrypt", [str(i) for i in identities], self._chain.first_stdin, subprocess.PIPE, hashed)
        self._chain.children.append(decrypt)
        try:
            encrypt = _spawn("encrypt", [str(r) for r in recipients], decrypt.stdout, subprocess.PIPE, hashed)
        except BaseException:
            decrypt.kill()
            decrypt.wait()
            raise
        self._chain.children.append(encrypt)
        for fh in (decrypt.stdout, encrypt.stdout):
            widen_pipe(fh.fileno())
        decrypt.stdout.close()  # the encrypting child holds it now
        decrypt.stdout = None
        self._start(encrypt.stdout)

    def _finished(self, digests: list[dict[str, Digest]]) -> None:
        decrypted, encrypted = digests
        self.source_digest, self.plain_digest = decrypted.get("in"), encrypted.get("in")


def decrypted_digest(src: BinaryIO, identities, *, what: str) -> tuple[Digest, Digest]:
    """Read the age object ``src`` to its end through a decrypting child: ((size, sha256) of ``src``, of its plaintext).

    The plaintext goes nowhere. ``src`` is hashed here, by the thread that feeds the
    child, while the child decrypts and hashes the plaintext: the two hashes then run on
    two cores instead of one after the other. A wrong identity or a damaged object
    raises VerificationFailed.
    """
    stored = HashingReader(src)
    chain = _Children(stored, what=what, direct=False)
    try:
        chain.children.append(_spawn("decrypt", [str(i) for i in identities], chain.first_stdin, subprocess.DEVNULL, ("out",)))
        chain.start()
        [found] = chain.finish()
    finally:
        chain.close()
    if "out" not in found:
        raise PermanentError(f"{what}: the decrypting process reported no digest",
                             "check that the worker runs this version of backup-tasks throughout")
    return (stored.size, stored.sha256), found["out"]


class DecryptingChild(_ChildOutput):
    """The plaintext of the age object ``src`` (to ``identities``), decrypted in a child process.

    pyrage holds the GIL for as long as it decrypts, so in a thread of the reading process
    it stops the threads beside it (the tar scan, the read-ahead, the decoders' hand-offs)
    whenever it works. ``src`` is fed to the child by a thread of this process (``src``
    is usually a hashing reader, which must see every byte here). A damaged object or a
    wrong identity raises VerificationFailed (check "decrypt") from the read that meets
    the end of the child's output; ``close`` stops the child whatever state it is in.
    """

    def __init__(self, src: BinaryIO, identities, *, what: str) -> None:
        self._chain = _Children(src, what=what, direct=False)
        child = _spawn("decrypt", [str(i) for i in identities], self._chain.first_stdin, subprocess.PIPE)
        self._chain.children.append(child)
        widen_pipe(child.stdout.fileno())
        self._start(child.stdout)
