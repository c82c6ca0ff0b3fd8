"""The second half of an incremental's first pass, walked and joined in a process of its own.

Why: the first pass (changes.py: walk, lstat, the merge join with the parent's listing,
a draft line per path) is one Python thread's work, most of an incremental's time, while
the machine's other cores wait. The walk is cut in two at a directory's entries
(members.split_members); this process runs the first half, a child the second, each
reading only its own part of the parent's listing. The halves are consecutive in tree
order, so their outputs put end to end are what one join would have written, byte for
byte; only the draft marks' offsets move by the first half's draft. The parent entries
the second half did not meet join the first half's before renames are resolved, so a
directory renamed across the cut is still found as a rename.

Why a new interpreter and not a fork: the dump runs in a thread beside the pipeline's
other stages (and Celery's), and a fork copies whatever locks those held. The child
imports only this package's modules (tens of ms, on the other core).

What the child writes, in its own directory of the work directory: the same files as
the first half (draft, marks, members, new files, hard-linked names), the gone parent
entries as listing lines, and a result document (counts, the walk's warnings, or the
error that stopped it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

import orjson

from backup_tasks.errors import SourceError
from backup_tasks.sources.files.changes import BUFFER, DRAFT, LINKED, MARK, MARKS, Chain, Outputs, lines, scan
from backup_tasks.sources.files.members import SecondHalf
from backup_tasks.sources.files.parent_listing import Unsorted, in_order
from backup_tasks.sources.files.tree_listing import decode, encode

#: a parent listing smaller than this (zstd bytes; some 18,000 paths) is joined in one process: the
#: child's start (~50 ms of CPU) would be a third of what such a join costs
SPLIT_FROM_BYTES = 1 << 20

_DIR, _SPEC, _RESULT, _MEMBERS, _PENDING, _GONE = (
    "second-half", "spec.json", "result.json", "members.nul", "pending-new.jsonl", "gone.jsonl")


def worth_splitting(chain: Chain) -> bool:
    """Whether an incremental's join is cut in two: a tree big enough (its parent's listing tells) and a core to spare.

    The spare core is read from the 1-minute load average, which counts the backups' own
    work too: below one more than the cores this process may run on. Measured on a 2-core
    host, the split took the first pass of a 100k-file tree from 0.75-0.85 s to 0.48-0.58 s
    at load 2.4-2.9 (one other busy process), and made it slower at load 3.5-5: the two
    halves shared the CPU one process would have had (this host shares it between
    sessions, not processes), and the child's start and the merge came on top.
    """
    if chain.parent_listing is None or not sys.executable or chain.parent_listing.stat().st_size < SPLIT_FROM_BYTES:
        return False
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return os.getloadavg()[0] < cores + 1


class OtherHalf:
    """The child process joining ``half``; ``finish`` waits for it and appends its outputs to the first half's."""

    def __init__(self, half: SecondHalf, chain: Chain, workdir: Path, warnings: list[str], *, full: bool) -> None:
        self.key = half.key()
        self.dir = Path(workdir) / _DIR
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(mode=0o700)
        self._warnings = warnings
        spec = {"half": [half.root, half.directory, half.start, list(half.exclude)], "backup_id": chain.backup_id,
                "parent_listing": str(chain.parent_listing), "rehash": chain.rehash, "full": full}
        (self.dir / _SPEC).write_bytes(orjson.dumps(spec))
        # The package's own directory first, so the child runs the code this process runs.
        root = str(Path(__file__).resolve().parents[3])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (root, os.environ.get("PYTHONPATH"))))}
        try:
            with open(self.dir / "stderr", "wb") as stderr:
                self._proc = subprocess.Popen([sys.executable, "-m", __name__, str(self.dir)], stdin=subprocess.DEVNULL,
                                              stdout=subprocess.DEVNULL, stderr=stderr, env=env)
        except OSError:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise

    def finish(self, out: Outputs, gone: Callable[[dict], None]) -> dict:
        """Wait for the child; append its draft (marks moved), members, new files and hard links; hand over its gone entries."""
        code = self._proc.wait()
        try:
            result = orjson.loads((self.dir / _RESULT).read_bytes())
        except FileNotFoundError:
            tail = (self.dir / "stderr").read_bytes()[-2000:].decode("utf-8", "replace").strip()
            raise SourceError(f"the second half of the walk stopped (exit code {code}): {tail}",
                              "this is a bug in backup-tasks; report it with the message") from None
        if result.get("unsorted"):
            raise Unsorted
        if "error" in result:
            raise SourceError(result["error"]["message"], result["error"]["remedy"])
        out.draft.flush()
        offset = out.draft.tell()
        for name, into in ((DRAFT, out.draft), (_MEMBERS, out.members), (_PENDING, out.pending), (LINKED, out.linked)):
            with open(self.dir / name, "rb") as part:
                shutil.copyfileobj(part, into, BUFFER)
        with open(self.dir / MARKS, "rb") as marks:  # as many as the second half's changes: read a block at a time
            while block := marks.read(MARK.size * 4096):
                out.marks.write(b"".join(MARK.pack(at + offset, why) for at, why in MARK.iter_unpack(block)))
        for line in lines(self.dir / _GONE):
            gone(decode(line))
        self._warnings.extend(result["warnings"])
        return result["counts"]

    def stop(self) -> None:
        """End the child if it still runs (the first half failed), and remove its directory."""
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def _run(workdir: Path) -> dict:
    spec = orjson.loads((workdir / _SPEC).read_bytes())
    root, directory, start, exclude = spec["half"]
    half = SecondHalf(root, directory, start, tuple(exclude))
    chain = Chain(spec["backup_id"], workdir, Path(spec["parent_listing"]), spec["rehash"])
    warnings: list[str] = []
    with Outputs.created(workdir, workdir / _MEMBERS, workdir / _PENDING) as out, \
         open(workdir / _GONE, "wb", buffering=BUFFER) as gone:
        try:
            counts = scan(half.paths(warnings), in_order(chain.parent_listing, start=half.key()), chain, out,
                          lambda entry: gone.write(encode(entry) + b"\n"), full=spec["full"], has_parent=True)
        except Unsorted:
            return {"unsorted": True}
        except SourceError as exc:
            return {"error": {"message": exc.message, "remedy": exc.remedy}}
    return {"counts": counts, "warnings": warnings}


def main(workdir: str) -> None:
    result = _run(Path(workdir))
    part = Path(workdir) / (_RESULT + ".part")
    part.write_bytes(orjson.dumps(result))
    os.replace(part, Path(workdir) / _RESULT)  # the parent reads a whole result or none


if __name__ == "__main__":
    main(sys.argv[1])
