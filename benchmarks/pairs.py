"""A goal's ratio from interleaved pairs: the baseline and our chain back to back, N times.

The 2-core hosts these benchmarks run on drift: the same ``pg_dump -Fc -Z0 -f`` took 4.0 s
and 5.7 s an hour apart on one machine, with nothing else running. A ratio of two single
runs taken minutes apart then says more about the host than about the chain. Here each
pair runs the baseline and the chain one right after the other (the order alternates, so
neither always runs on a warm cache), and the figure is the median of the pairs' ratios,
printed with every pair so the spread is visible.

    python benchmarks/pairs.py --config targets.toml --target bench-pg --pairs 5 \\
        --baseline 'pg_dump -h 127.0.0.1 -U postgres -Fc -Z0 -f /tmp/floor.dump bench_pg_source' \\
        --cleanup 'rm -f /tmp/floor.dump'

A files goal's baseline is two commands (the pipeline, then its read-back), timed as one:
pass them joined with ``&&``. ``--cleanup`` runs after each baseline, outside the timing.
Our chain is ``backupctl backup TARGET --wait`` on the embedded default (or whatever the
config says), its state directory emptied before each run so every run is a full.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path


def timed(argv, *, shell: bool = False) -> tuple[float, float]:
    """Wall and CPU seconds (the children's) of one command, which must succeed."""
    before, started = os.times(), time.perf_counter()
    subprocess.run(argv, shell=shell, check=True, stdout=subprocess.DEVNULL, executable="/bin/bash" if shell else None)
    after = os.times()
    cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    return time.perf_counter() - started, cpu


def state_dirs(config: Path) -> list[Path]:
    """The staging, catalog and store paths the config names, emptied between runs."""
    import tomllib

    doc = tomllib.loads(config.read_text())
    paths = [doc.get("settings", {}).get("staging_dir")]
    url = doc.get("settings", {}).get("catalog_url", "")
    if url.startswith("sqlite:///"):
        paths.append(url.removeprefix("sqlite:///"))
    paths += [tier.get("path") for tier in doc.get("tiers", {}).values()]
    return [Path(p) for p in paths if p]


def reset(paths: list[Path]) -> None:
    for path in paths:
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, type=Path)
    parser.add_argument("--target", required=True)
    parser.add_argument("--baseline", required=True, help="shell command timed as the goal's baseline")
    parser.add_argument("--cleanup", default=None, help="shell command run after each baseline, not timed")
    parser.add_argument("--pairs", type=int, default=5)
    args = parser.parse_args()
    chain = [sys.executable, "-m", "backup_tasks.cli", "--config", str(args.config), "--json", "backup", args.target, "--wait"]
    paths = state_dirs(args.config)
    rows = []
    for i in range(args.pairs):
        order = ("baseline", "chain") if i % 2 == 0 else ("chain", "baseline")
        got = {}
        for which in order:
            if which == "chain":
                reset(paths)
                got[which] = timed(chain)
            else:
                got[which] = timed(args.baseline, shell=True)
                if args.cleanup:
                    subprocess.run(args.cleanup, shell=True, check=True)
        (bw, bc), (cw, cc) = got["baseline"], got["chain"]
        rows.append({"baseline_s": round(bw, 2), "baseline_cpu": round(bc, 2), "chain_s": round(cw, 2), "chain_cpu": round(cc, 2),
                     "ratio": round(cw / bw, 3), "first": order[0]})
        print(f"pair {i + 1}: baseline {bw:.2f} s ({bc:.1f} CPU-s), chain {cw:.2f} s ({cc:.1f} CPU-s): {cw / bw:.2f}x"
              f"  [{order[0]} first; load {os.getloadavg()[0]:.1f}]", flush=True)
    reset(paths)
    ratios = [r["ratio"] for r in rows]
    print(f"median of {len(rows)} pair ratios: {statistics.median(ratios):.2f}x (range {min(ratios):.2f}-{max(ratios):.2f}); "
          f"medians: baseline {statistics.median(r['baseline_s'] for r in rows):.2f} s, chain {statistics.median(r['chain_s'] for r in rows):.2f} s")
    print(json.dumps({"target": args.target, "pairs": rows, "median_ratio": statistics.median(ratios)}))


if __name__ == "__main__":
    main()
