#!/usr/bin/env python
"""How fast a chain could be on this host: the work it owes, timed pass by pass, packed perfectly.

``floors.py`` runs the chain's passes as one shell pipeline, which pays a pipe copy per
``tee`` and so says little about what is possible. This script asks the other question:
if every pass the chain owes cost no more than the standard tool that does it, and the
cores were never idle, how long would the chain take? Each pass runs alone over a
page-cached file, and its cost is the whole machine's CPU seconds (``/proc/stat``, so a
database server's share of the dump counts too), the best of ``--repeat`` runs:

- the dump itself: the goal's baseline command, whose wall time is also the goal's floor
  (or ``--dump``, where the baseline is a whole pipeline that the dump is only the start of);
- backing up: the plaintext's sha256 twice (the dump's seal and the next stage's check of
  it), ``zstd -3 -T2``, the compressed file's sha256 twice (its seal and the check), age
  encryption, the stored object's sha256;
- verify, which reads the committed object and so cannot overlap the backup: the stored
  object's sha256, age decryption, ``zstd -d``, the plaintext's sha256 and the source's
  own check (``--check``, fed the plaintext);
- with ``--per-file-hash`` (a files backup lists every member's sha256 as the archive passes,
  in the dump and again in verify): one more pass of sha256 over the plaintext in each.

The bound is ``max(dump wall, (dump + backing up) / cores) + max(verify / cores, its
longest hash)``: a sha256 is one sequential pass, where decryption and framed decoding can
be split across cores. Nothing real reaches it: the stages' own code, the staged files'
page cache and the scheduler all cost something. A goal below it cannot be met here; a
goal just above it leaves that much room for everything else.

    python benchmarks/bound.py --baseline 'pg_dump -h 127.0.0.1 -U postgres -Fc -Z0 -f {out} bench_pg_source' \\
        --check 'pg_restore --list' --goal 1.6 --repeat 3
    python benchmarks/bound.py --baseline 'mariadb-dump -h 127.0.0.1 -u root --single-transaction --routines \\
        --triggers --events --hex-blob bench_my_source > {out}' --check 'grep -c "^INSERT"' --goal 2.0
    python benchmarks/bound.py --dump 'tar -cf {out} -C / tmp/bfiles/tree-files' --per-file-hash \\
        --baseline 'tar -cf - -C / tmp/bfiles/tree-files | zstd -3 -T2 -q | age -r RECIPIENT > {out} && \\
        age -d -i IDENTITY {out} | zstd -d -q | tar -tvf - > /dev/null' --check 'tar -tvf - > /dev/null' --goal 1.3

needs: zstd, age and openssl on PATH; ``{out}`` in the dump is where it writes the plaintext
(and in a baseline that is not the dump, a scratch file it may write).
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import tempfile
import time
from pathlib import Path

SHA = "openssl dgst -sha256 {} > /dev/null"


def busy_seconds() -> float:
    """CPU seconds the whole machine has spent not idle (user, nice, system, irq, softirq)."""
    with open("/proc/stat") as fh:
        fields = [int(x) for x in fh.readline().split()[1:8]]
    user, nice, system, _idle, _iowait, irq, softirq = fields
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def timed(script: str) -> tuple[float, float]:
    """Wall and machine CPU seconds of one shell command, which must succeed."""
    cpu, started = busy_seconds(), time.perf_counter()
    subprocess.run(["bash", "-o", "pipefail", "-c", script], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started, busy_seconds() - cpu


def best(script: str, repeat: int) -> tuple[float, float]:
    runs = [timed(script) for _ in range(repeat)]
    return min(r[0] for r in runs), min(r[1] for r in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", required=True, help="the goal's baseline; {out} is where it writes the plaintext")
    parser.add_argument("--dump", default=None, help="the chain's dump, if not the baseline itself; {out} is where it writes the plaintext")
    parser.add_argument("--per-file-hash", action="store_true",
                        help="the source hashes every member as the archive passes, in the dump and in verify")
    parser.add_argument("--check", required=True, help="the source's own check in verify, reading the plaintext on stdin")
    parser.add_argument("--goal", type=float, required=True, help="the goal, as a multiple of the baseline's wall time")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None, help="where the plaintext and its encodings go (default: a temp dir)")
    parser.add_argument("--cores", type=int, default=None,
                        help="pack the passes on this many cores instead of this host's (what a larger host would allow, "
                             "with the passes costing what they cost here)")
    args = parser.parse_args()
    cores = args.cores or os.cpu_count() or 1
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        plain, packed, stored = (Path(tmp) / n for n in ("plain", "plain.zst", "plain.zst.age"))
        identity = Path(tmp) / "identity.txt"
        subprocess.run(["age-keygen", "-o", str(identity)], check=True, stderr=subprocess.DEVNULL)
        recipient = subprocess.run(["age-keygen", "-y", str(identity)], check=True, capture_output=True, text=True).stdout.strip()
        p, z, s = (shlex.quote(str(x)) for x in (plain, packed, stored))

        floors = [timed(args.baseline.replace("{out}", p)) for _ in range(args.repeat)]
        floor_wall = sorted(w for w, _ in floors)[len(floors) // 2]
        if args.dump:
            dumps = [timed(args.dump.replace("{out}", p)) for _ in range(args.repeat)]
            dump_wall, dump_cpu = sorted(w for w, _ in dumps)[len(dumps) // 2], min(c for _, c in dumps)
        else:
            dump_wall, dump_cpu = floor_wall, min(c for _, c in floors)
        subprocess.run(["zstd", "-3", "-T2", "-q", "-f", str(plain), "-o", str(packed)], check=True)
        subprocess.run(["age", "-r", recipient, "-o", str(stored), str(packed)], check=True)

        backing_up = {
            "sha256 of the plaintext, x2": (SHA.format(p), 2),
            "zstd -3 -T2": (f"zstd -3 -T2 -q -c {p} > /dev/null", 1),
            "sha256 of the compressed file, x2": (SHA.format(z), 2),
            "age encryption": (f"age -r {recipient} {z} > /dev/null", 1),
            "sha256 of the stored object": (SHA.format(s), 1),
        }
        if args.per_file_hash:
            backing_up["sha256 of every member (as of the plaintext)"] = (SHA.format(p), 1)
        verifying = {
            "sha256 of the stored object": (SHA.format(s), 1),
            "age decryption": (f"age -d -i {shlex.quote(str(identity))} {s} > /dev/null", 1),
            "zstd -d": (f"zstd -d -q -c {z} > /dev/null", 1),
            "sha256 of the plaintext": (SHA.format(p), 1),
            "the source's check": (f"{args.check} < {p}", 1),
        }
        if args.per_file_hash:
            verifying["sha256 of every member (as of the plaintext)"] = (SHA.format(p), 1)
        print(f"baseline: wall {', '.join(f'{w:.2f}' for w, _ in floors)} s (median {floor_wall:.2f}); "
              f"machine CPU {min(c for _, c in floors):.2f} s at best; dump: wall {dump_wall:.2f} s, "
              f"machine CPU {dump_cpu:.2f} s at best; plaintext {plain.stat().st_size / 1e6:.0f} MB, "
              f"stored {stored.stat().st_size / 1e6:.0f} MB; {cores} cores")
        sums = {}
        for part, passes in (("backing up", backing_up), ("verify", verifying)):
            total, longest = 0.0, 0.0
            for name, (script, times) in passes.items():
                wall, cpu = best(script, args.repeat)
                total += cpu * times
                if name.startswith("sha256"):  # a hash is one sequential pass; decoding and decryption can be split
                    longest = max(longest, wall)
                print(f"  {part:<10} {name:<36} {cpu:6.2f} CPU-s{f' x{times}' if times > 1 else ''}  (alone: {wall:.2f} s wall)")
            sums[part] = (total, longest)
    backup = max(dump_wall, (dump_cpu + sums["backing up"][0]) / cores)
    verify = max(sums["verify"][0] / cores, sums["verify"][1])
    bound = backup + verify
    print(f"bound: backing up {backup:.2f} s ({dump_cpu:.2f} + {sums['backing up'][0]:.2f} CPU-s on {cores} cores) "
          f"+ verify {verify:.2f} s ({sums['verify'][0]:.2f} CPU-s) = {bound:.2f} s = {bound / floor_wall:.2f}x the baseline; "
          f"goal {args.goal:.2f}x = {args.goal * floor_wall:.2f} s, which leaves {args.goal * floor_wall - bound:+.2f} s "
          f"for everything the passes do not cost")


if __name__ == "__main__":
    main()
