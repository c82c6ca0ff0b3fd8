"""The chain's passes done by the standard tools alone: what that work costs here, beside the goal's bare baseline.

A goal's baseline is a bare pipeline (``pg_dump -f``, ``tar | zstd | age``) that proves
nothing. The chain owes more passes over the same bytes, and each is there for a reason:

- the dump hashes the plaintext as it writes it (the seal the next stage is held to);
- the next stage hashes what it read again, and finishes only if that matches the seal
  (a stage never passes on bytes its producer did not commit);
- a files dump also hashes every file for the listing;
- the stored object is hashed once, for the signed manifest, and made durable;
- verify reads the committed object back: its sha256, a decryption, a decompression,
  the plaintext's sha256 (and, for files, every file's), and the source's own check
  (``pg_restore --list``, the SQL dump's tables and trailer, the tar listing).

Here those passes run as Go's ``age``, ``zstd``, OpenSSL's SHA-256 (SHA-NI) and the
source's own tools, in parallel wherever a shell pipeline allows: each extra hash is a
``tee`` into ``openssl dgst``. Wall and CPU seconds (the shell's children, the dump tool
included; a database server's own CPU is not counted, as in the baseline).

It is not a lower bound: every ``tee`` copies the stream into one more pipe, which a single
process hashing its own buffers does not pay, and the shell cannot overlap verify with the
next backup's work any more than the chain can. Where the chain comes out faster than this,
the figure says the goal is not out of reach for that reason alone; where it comes out
slower, the difference is ours. The CPU seconds, divided by the cores, bound the wall time
of the same passes from below only if nothing else were paid.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import time
from pathlib import Path

DIGEST = "openssl dgst -sha256 >/dev/null"


def children_cpu() -> float:
    t = os.times()
    return t.children_user + t.children_system


def chain_floor(dump: str, check: str, recipient: str, identity: Path, out: Path, *,
                dump_hashes: int = 2, verify_hashes: int = 1, env: dict | None = None) -> dict:
    """Run the chain's passes with the tools alone: ``dump`` writes the plaintext to stdout, ``check`` reads it on stdin.

    ``dump_hashes``: passes over the plaintext while backing up (2: the seal and the next
    stage's check of it; 3 for files: every file's hash too, the same bytes once more).
    ``verify_hashes``: passes over the plaintext in verify (2 for files: the whole and
    every file).
    """
    tees = " ".join([f">({DIGEST})"] * dump_hashes)
    checks = " ".join([f">({DIGEST})"] * (verify_hashes - 1))
    o, i = shlex.quote(str(out)), shlex.quote(str(identity))
    script = (f"set -o pipefail; {dump} | tee {tees} | zstd -3 -T2 -q | age -r {recipient} | tee >({DIGEST}) > {o}; "
              f"sync {o}; {DIGEST} < {o} & age -d -i {i} {o} | zstd -d -q | tee -p {checks} >({check}) | {DIGEST}; wait")
    started, cpu = time.perf_counter(), children_cpu()
    subprocess.run(["bash", "-c", script], check=True, env=env)
    seconds, used = time.perf_counter() - started, children_cpu() - cpu
    stored = out.stat().st_size
    out.unlink()
    return {"seconds": round(seconds, 3), "cpu_seconds": round(used, 3), "stored_bytes": stored}
