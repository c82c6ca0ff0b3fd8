"""Staged files: how a backup stage writes its output and hands it to the next stage.

Every stage of the chain (ops/backup.py) writes one file in the run's staging directory
and a small ``<stage>.json`` reference to it; the next stage opens that file only if its
size is what the reference sealed. Kept apart from the stages themselves because the
write-then-rename-then-reference protocol, and why it needs no fsync, is one argument
that every stage relies on.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import time
from pathlib import Path
from typing import BinaryIO, Callable

from backup_tasks.errors import PermanentError, StagingFull
from backup_tasks.stages.digest import HashingWriter, SizingWriter
from backup_tasks.units import human_size


def find_ref(run_dir: Path, stage: str) -> dict | None:
    """The stage's committed reference if it and its file exist: a redelivered stage returns it."""
    path = run_dir / f"{stage}.json"
    if path.exists():
        ref = json.loads(path.read_text())
        if Path(ref["path"]).exists():
            return ref
    return None


def commit_ref(run_dir: Path, stage: str, ref: dict) -> dict:
    """Write the stage's reference under a temp name and rename it: the stage is done once it exists."""
    tmp = run_dir / f".{stage}.json.tmp"
    tmp.write_text(json.dumps(ref))
    os.replace(tmp, run_dir / f"{stage}.json")
    return ref


def write_output(final: Path, produce: Callable[[BinaryIO], None], *, seal: bool = True) -> tuple[int, str | None, float]:
    """Run ``produce`` into a private temp file and rename it into place; return size, sha256, seconds.

    ``seal``: hash what is written (the plaintext, the stored object); otherwise the
    sha256 returned is None and only the size is counted (an intermediate).

    No fsync, and here is why the redelivery story holds without one. A stage commits
    in three steps: write the temp file, rename it to its final name, write the
    ``<stage>.json`` reference (temp name and rename too). A redelivered stage that finds
    its reference returns it without looking at the file. If the worker process dies
    (SIGKILL, out of memory, a time limit), every write it made is in the kernel's page
    cache and survives it: a reference exists only after the whole file was written and
    renamed, so a reference always points at a complete file, fsync or not. Only a crash
    of the host (power loss, kernel panic) can leave a renamed file, or its reference,
    whose data never reached the disk: the file comes back short, empty, or (on some
    filesystems) the right length with zeros inside. What catches each case:

    - short or empty: the next stage compares the file's size with the reference before
      it reads (``open_staged``) and fails naming the stage and both sizes; upload
      compares the size the tier stored, too;
    - right length, wrong bytes, in an intermediate or the plaintext: the stored object
      is then the encryption of wrong bytes, so its own hash matches, but verify
      decompresses it back and compares against the plaintext sha256 that dump sealed
      (and zstd's frame checksum fails first): the run fails at verify, never good;
    - right length, wrong bytes, in the stored object: upload's copy hashes what it
      stores and compares with encrypt's seal; a hard-linked object is read back by
      verify against the same seal.

    So nothing damaged is ever recorded as good; a host crash costs a failed run (the
    next one starts from scratch) instead of an fsync of every staged file on every run.
    """
    started = time.monotonic()
    tmp = final.with_name(f".{final.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb", buffering=0) as raw:
            writer = HashingWriter(raw) if seal else SizingWriter(raw)
            produce(writer)
        os.replace(tmp, final)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if _out_of_space(exc):
            raise _staging_full(final) from None
        raise
    return writer.size, writer.sha256, round(time.monotonic() - started, 3)


def open_staged(ref: dict, stage: str) -> BinaryIO:
    """The previous stage's file, refused if its size is not what that stage's reference says.

    Costs one fstat. A staged file that is shorter (a host crash lost its unwritten
    data, see ``write_output``) or longer than its reference was changed after the
    stage that wrote it committed; reading on would only store something that verify
    must reject later.
    """
    fh = open(ref["path"], "rb")
    size = os.fstat(fh.fileno()).st_size
    if size != ref["size"]:
        fh.close()
        raise PermanentError(
            f"{stage}: the staged file {Path(ref['path']).name} of run {ref['backup_id']} is {size} bytes, but the "
            f"stage before sealed it at {ref['size']} bytes: it changed after it was written (a host crash, or something "
            "else writing in the staging directory)",
            "run the backup again; if it happens again, check the disk holding staging_dir and what else writes there")
    return fh


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


def carry(ref: dict) -> dict:
    """The run's identity, handed on from stage to stage."""
    return {k: ref[k] for k in ("backup_id", "target", "type") if k in ref}


def drop_input(ref: dict, output: Path) -> None:
    """The previous stage's file is no longer needed once this stage's output is committed."""
    if Path(ref["path"]) != output:
        Path(ref["path"]).unlink(missing_ok=True)
