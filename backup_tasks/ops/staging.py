"""Staged files: how a backup stage writes its output, seals it, and hands it to the next stage.

Every stage of the chain (ops/backup.py) writes one file in the run's staging directory.
The next stage need not wait for it to be finished: it is sent as soon as the output has
started and follows the growing file (ops/following.py). What makes that safe is the
protocol kept here, one argument that every stage relies on:

- An *attempt* of a stage claims its output: it takes an exclusive flock on
  ``<stage>.attempt``, writes its attempt id there, removes what earlier attempts left,
  and writes into ``.<name>.<attempt>.part``. The flock is held until the attempt ends,
  however it ends, and the kernel drops it if the process dies: a follower that finds
  it free while no seal exists knows its producer is gone.
- The attempt *seals* its output by renaming the part to its final name and committing
  ``<stage>.json`` (temp name and rename): the reference carrying the size, the sha256
  and the attempt id. A follower finishes only after that seal, and only if what it read
  has that size and hashes to that sha256.
- A redelivered stage starts a new attempt from the beginning; followers of the old
  one see another attempt id in ``<stage>.attempt`` and stop without sealing.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import secrets
import shutil
import time
from pathlib import Path
from typing import BinaryIO, Callable

from backup_tasks.errors import PermanentError, StagingFull
from backup_tasks.stages.digest import HashingWriter
from backup_tasks.units import human_size

#: ``forward(ref)``: send the next stage now, following the output this reference names
Forward = Callable[[dict], None]


def seal_path(run_dir: Path, stage: str) -> Path:
    return run_dir / f"{stage}.json"


def attempt_path(run_dir: Path, stage: str) -> Path:
    return run_dir / f"{stage}.attempt"


def find_ref(run_dir: Path, stage: str) -> dict | None:
    """The stage's seal (its committed reference), or None: a stage that finds its own seal is done."""
    try:
        return json.loads(seal_path(run_dir, stage).read_text())
    except FileNotFoundError:
        return None


def commit_ref(run_dir: Path, stage: str, ref: dict) -> dict:
    """Write the stage's reference under a temp name and rename it: the stage is done once it exists."""
    tmp = run_dir / f".{stage}.json.tmp"
    tmp.write_text(json.dumps(ref))
    os.replace(tmp, seal_path(run_dir, stage))
    return ref


class Producing:
    """One attempt at a stage's output: claim, write, seal (see the module docstring).

    Used as a context manager around the whole stage, so the claim (and the flock that
    tells followers this attempt is alive) lasts until the seal is committed; leaving
    without a seal removes the attempt's file, whatever was written.

    No fsync, and here is why the redelivery story holds without one. A reference
    exists only after the whole file was written and renamed, so if the worker process
    dies every write it made is in the kernel's page cache and survives it. Only a crash
    of the host (power loss, kernel panic) can leave a sealed file whose data never
    reached the disk: short, empty, or the right length with zeros inside. What catches
    each case: the next stage hashes what it reads and compares with the seal (size and
    sha256) before it seals its own output; upload's copy hashes what it stores; a
    hard-linked object is read back by verify against the same seal; and verify
    decompresses the stored object and compares the plaintext with dump's seal. So
    nothing damaged is ever recorded as good; a host crash costs a failed run instead
    of an fsync of every staged file on every run.
    """

    def __init__(self, run_dir: Path, stage: str, final: Path, head: dict, forward: Forward | None = None) -> None:
        self.run_dir, self.stage, self.final, self.head, self.forward = run_dir, stage, final, head, forward
        self.attempt = secrets.token_hex(6)
        self.part = final.with_name(f".{final.name}.{self.attempt}.part")
        self.size, self.sha256, self.seconds = 0, None, 0.0
        self._claim: int | None = None
        self._sealed = False

    def __enter__(self) -> "Producing":
        self._claim = os.open(attempt_path(self.run_dir, self.stage), os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self._claim, fcntl.LOCK_EX)  # an earlier attempt of this stage is over by now (the stage slot)
        try:
            os.ftruncate(self._claim, 0)
            os.pwrite(self._claim, self.attempt.encode(), 0)
        except OSError as exc:
            os.close(self._claim)
            if _out_of_space(exc):
                raise _staging_full(self.final) from None
            raise
        for stale in self.run_dir.glob(f".{self.final.name}.*.part"):
            stale.unlink(missing_ok=True)  # a dead attempt's output: its followers stop on the new attempt id
        return self

    def write(self, produce: Callable[[BinaryIO], None]) -> None:
        """Run ``produce`` into the attempt's file, announcing it to the next stage once it exists; rename it into place."""
        started = time.monotonic()
        fd = os.open(self.part, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb", buffering=0) as raw:
                writer = HashingWriter(raw)
                if self.forward is not None:
                    self.forward(self.following_ref())
                produce(writer)
            os.replace(self.part, self.final)
        except BaseException:
            self.part.unlink(missing_ok=True)
            raise
        self.size, self.sha256, self.seconds = writer.size, writer.sha256, round(time.monotonic() - started, 3)

    def following_ref(self) -> dict:
        """What the next stage needs to follow this attempt's output before it is sealed."""
        return {**self.head, "stage": self.stage, "path": str(self.part), "name": self.final.name,
                "attempt": self.attempt, "sealed": False}

    def seal(self, extra: dict | None = None) -> dict:
        """Commit the stage's reference: the final path, size, sha256 and this attempt's id."""
        ref = commit_ref(self.run_dir, self.stage, {
            **self.head, **(extra or {}), "stage": self.stage, "path": str(self.final), "name": self.final.name,
            "size": self.size, "sha256": self.sha256, "seconds": self.seconds, "attempt": self.attempt, "sealed": True})
        self._sealed = True
        return ref

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if not self._sealed:
                self.part.unlink(missing_ok=True)
                self.final.unlink(missing_ok=True)
        finally:
            os.close(self._claim)  # releases the flock: followers now see a seal, or a producer gone
        # A full staging disk may strike any write of the attempt (its output, its seal, a
        # neighbour stage's output first): name the directory and the remedy, not "[Errno 28]".
        if exc is not None and not isinstance(exc, StagingFull) and _out_of_space(exc):
            raise _staging_full(self.final) from None


def _out_of_space(exc: BaseException | None) -> bool:
    """ENOSPC or EDQUOT, also when a filter wrapped it (its cause or context)."""
    seen = 0
    while exc is not None and seen < 5:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def _staging_full(final: Path) -> StagingFull:
    """Name the directory and how much room is left (after the partial file was removed), not just '[Errno 28]'."""
    run_dir = final.parent
    try:
        free = human_size(shutil.disk_usage(run_dir).free)
    except OSError:
        free = "unknown"
    return StagingFull(f"no space left in the staging directory {run_dir.parent} while writing {final.name} "
                       f"of run {run_dir.name} ({free} free there now that the partial file is removed)",
                       "free space on that filesystem, or point staging_dir in [settings] (BACKUP_STAGING_DIR) at a "
                       "disk with room for about twice the target's size, then run the backup again")


def name_of(ref: dict) -> str:
    """The staged file's final name (a reference sent before the seal names the attempt's part file in ``path``)."""
    return ref.get("name") or Path(ref["path"]).name


def open_sealed(ref: dict, stage: str) -> BinaryIO:
    """A sealed staged file, refused if its size is not what the seal says (one fstat).

    For a later copy of a file already read and checked once: the tier that stores it
    hashes it again and compares with the seal.
    """
    fh = open(ref["path"], "rb")
    size = os.fstat(fh.fileno()).st_size
    if size != ref["size"]:
        fh.close()
        raise PermanentError(
            f"{stage}: the staged file {name_of(ref)} of run {ref['backup_id']} is {size} bytes, but the "
            f"stage before sealed it at {ref['size']} bytes: it changed after it was written (a host crash, or something "
            "else writing in the staging directory)",
            "run the backup again; if it happens again, check the disk holding staging_dir and what else writes there")
    return fh


def carry(ref: dict) -> dict:
    """The run's identity, handed on from stage to stage."""
    return {k: ref[k] for k in ("backup_id", "target", "type") if k in ref}


def drop_input(ref: dict, output: Path) -> None:
    """The previous stage's file is no longer needed once this stage's output is committed."""
    if Path(ref["path"]) != output:
        Path(ref["path"]).unlink(missing_ok=True)
