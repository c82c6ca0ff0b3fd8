"""Reading a staged file while its producer may still be writing it.

The next stage of a chain is sent as soon as its input has started (ops/staging.py), so
it reads a file that may still grow. ``Following`` reads what is there, waits at the end
for more, and ends only at the producer's seal, after checking that what it read has the
sealed size and hashes to the sealed sha256. If the producer's attempt is replaced (it
was redelivered, or retried) or ends without a seal (it failed, or its process died),
the follower raises ``ProducerGone``: it stops without sealing its own output, and the
stage is dropped quietly, because whoever carries the run on sends a new follower, and
a failed producer has already failed the run.

A sealed input (the embedded default runs the stages one after another) is read the
same way: the seal is there when the end is reached.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import time
from pathlib import Path

from backup_tasks.errors import PermanentError
from backup_tasks.ops import staging

#: how long the follower sleeps at the end of a growing file, first and at most (seconds)
FIRST_WAIT, MOST_WAIT = 0.002, 0.02


class ProducerGone(Exception):
    """The attempt this stage followed will never seal: stop without sealing, and quietly."""

    def __init__(self, stage: str, backup_id: str, why: str) -> None:
        super().__init__(f"{stage} of run {backup_id}: {why}; this attempt stops")


class Following:
    """A read-only file object over a staged file, as its producer writes it.

    ``read(n)`` returns ``n`` bytes, or fewer only at the sealed end; ``seal`` is the
    producer's reference once the end was reached and checked. Seeking back to the start
    (a tier's retry) reads the file again from its first byte.
    """

    def __init__(self, run_dir: Path, ref: dict, reader: str) -> None:
        self.run_dir, self.ref, self.reader = run_dir, ref, reader
        self.producer = ref["stage"]
        self.seal: dict | None = None
        self._fh = self._open()
        self._hash, self.size = hashlib.sha256(), 0
        sealed = staging.find_ref(run_dir, self.producer)
        #: the input's size if known now (it was sealed before this stage began), for progress reports
        self.expected_size: int | None = ref.get("size") or (sealed or {}).get("size")

    # -- file object ---------------------------------------------------------------

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            return b"".join(iter(lambda: self.read(1 << 20), b""))
        data = self._fh.read(n)
        if len(data) == n:  # the usual case, behind the producer: no copy into a buffer and out again
            self._hash.update(data)
            self.size += n
            return data
        buf = bytearray(n)
        buf[:len(data)] = data
        got = self._rest(memoryview(buf), len(data))
        return bytes(buf[:got])

    def readinto(self, buf) -> int:
        """Straight into the caller's buffer (the compress stage's frames): no bytes object copied in."""
        view = memoryview(buf).cast("B")
        got = self._fh.readinto(view)
        if got == len(view):
            self._hash.update(view)
            self.size += got
            return got
        return self._rest(view, got)

    def _rest(self, view: memoryview, got: int) -> int:
        """Fill ``view`` on from ``got`` bytes, waiting at the end of what is written; fewer bytes only at the sealed end."""
        wait = FIRST_WAIT
        while got < len(view):
            n = self._fh.readinto(view[got:])
            if n:
                got += n
                wait = FIRST_WAIT
                continue
            if self.seal is not None:
                break  # sealed, and nothing more after it: the end
            # The seal and the producer's claim are looked at only once a first nap brought
            # nothing: a producer still writing is caught up with in one nap, and the look
            # (two files opened, a lock tried) cost more than the nap on every catch-up.
            if wait > FIRST_WAIT and self._at_end():
                continue  # just sealed: once more for what was written before the seal
            time.sleep(wait)
            wait = min(wait * 2, MOST_WAIT)
        self._hash.update(view[:got])
        self.size += got
        if self.seal is not None and got < len(view):
            self._check_seal()
        return got

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.size

    def seek(self, offset: int, whence: int = 0) -> int:
        if (offset, whence) != (0, 0):
            raise OSError("a followed staged file can only be rewound to its start")
        self._fh.seek(0)
        self._hash, self.size, self.seal = hashlib.sha256(), 0, None
        return 0

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> "Following":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def wait_sealed(self) -> dict:
        """Wait for the seal without reading (a tier that takes the sealed file by hard link reads nothing)."""
        wait = FIRST_WAIT
        while not self._at_end():
            time.sleep(wait)
            wait = min(wait * 2, MOST_WAIT)
        return self.seal

    # -- the producer's state ------------------------------------------------------

    def _open(self):
        wait = FIRST_WAIT
        while True:
            try:
                return open(self.ref["path"], "rb", buffering=0)
            except FileNotFoundError:
                pass
            seal = self._mine_sealed()  # renamed into place since the reference was sent
            if seal is not None:
                try:
                    return open(seal["path"], "rb", buffering=0)
                except FileNotFoundError:
                    raise PermanentError(
                        f"{self.reader}: the staged file {seal['name']} of run {self.ref['backup_id']} is missing, "
                        f"though the {self.producer} stage sealed it (a host crash, or something else deleting in the "
                        "staging directory)", "run the backup again; check what else writes in staging_dir") from None
            if not self._producer_alive() and self._mine_sealed() is None:  # it may have sealed between the two looks
                raise self._gone("its input was never written")
            time.sleep(wait)
            wait = min(wait * 2, MOST_WAIT)

    def _at_end(self) -> bool:
        """At the end of what is written: True once the seal is there (``self.seal``); ProducerGone if it never will be."""
        seal = self._mine_sealed()
        if seal is not None:
            self.seal = seal
            return True
        if not self._producer_alive():
            if self._mine_sealed() is None:  # it may have sealed between the two looks
                raise self._gone(f"the {self.producer} attempt it followed ended without sealing its output")
        return False

    def _mine_sealed(self) -> dict | None:
        return sealed_input(self.run_dir, self.ref, self.reader)

    def _producer_alive(self) -> bool:
        return producer_alive(self.run_dir, self.ref, self.reader)

    def _check_seal(self) -> None:
        seal = self.seal
        if self.size != seal["size"] or (seal.get("sha256") and self._hash.hexdigest() != seal["sha256"]):
            raise PermanentError(
                f"{self.reader}: the staged file {seal['name']} of run {self.ref['backup_id']} read {self.size} bytes "
                f"with sha256 {self._hash.hexdigest()[:16]}…, but the {self.producer} stage sealed it at {seal['size']} "
                f"bytes with sha256 {(seal.get('sha256') or '')[:16]}…: it changed after it was written (a host "
                "crash, or something else writing in the staging directory)",
                "run the backup again; if it happens again, check the disk holding staging_dir and what else writes there")

    def _gone(self, why: str) -> ProducerGone:
        return ProducerGone(self.reader, self.ref["backup_id"], why)


def sealed_input(run_dir: Path, ref: dict, reader: str) -> dict | None:
    """The producer's seal if its attempt named in ``ref`` sealed; ProducerGone if another attempt did."""
    seal = staging.find_ref(run_dir, ref["stage"])
    if seal is None:
        return None
    if ref.get("attempt") and seal.get("attempt") != ref["attempt"]:
        raise ProducerGone(reader, ref["backup_id"], f"another attempt of {ref['stage']} sealed its output")
    return seal


def producer_alive(run_dir: Path, ref: dict, reader: str) -> bool:
    """Whether the attempt named in ``ref`` still holds its claim; ProducerGone if another attempt took it."""
    producer = ref["stage"]
    try:
        fd = os.open(staging.attempt_path(run_dir, producer), os.O_RDONLY)
    except FileNotFoundError:
        raise ProducerGone(reader, ref["backup_id"], "the run's staging directory is gone (the run failed or was reaped)") from None
    try:
        current = os.pread(fd, 64, 0).decode()
        if current and ref.get("attempt") and current != ref["attempt"]:
            raise ProducerGone(reader, ref["backup_id"], f"a new attempt of {producer} started")
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def check_producer(run_dir: Path, ref: dict, reader: str) -> None:
    """ProducerGone now if the input will never be sealed, before the stage takes its run's lock or beats for it.

    A follower of a producer whose process died must not look alive itself: its beats
    and its refresh of the target's lock would keep the dead run from being reaped when
    the next start of the target finds it.
    """
    if sealed_input(run_dir, ref, reader) is None and not producer_alive(run_dir, ref, reader):
        if sealed_input(run_dir, ref, reader) is None:  # it may have sealed between the two looks
            raise ProducerGone(reader, ref["backup_id"], f"the {ref['stage']} attempt it follows ended without sealing its output")


def follow(run_dir: Path, ref: dict, reader: str) -> Following:
    """Open the input named by ``ref`` (sealed or still being written) for the stage ``reader``."""
    return Following(run_dir, ref, reader)


def merged(ref: dict, seal: dict) -> dict:
    """The input as the follower knows it at the end: what the message said, completed by the seal."""
    return {**ref, **seal}
