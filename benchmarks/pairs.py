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
config says), its state directory emptied before each run so every run is a full. With
``--worker`` each pair also times the backup as a scheduled one runs: on a warm Celery worker,
from ``client.enqueue_backup`` to verified (files.py's ``WarmWorker``), with no CLI start-up.
That worker keeps its catalog open, so it gets a copy of the config whose state paths end in
``-worker``, left to grow (a full per run) and emptied at the end; its first run is not timed.
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

import files  # noqa: E402 - on_worker, the Redis and worker of the files benchmark


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


def worker_copy(config: Path, paths: list[Path]) -> tuple[Path, list[Path]]:
    """The config again, its state paths ending in ``-worker``: a warm worker's catalog must not be reset under it."""
    text = config.read_text()
    for path in paths:
        text = text.replace(f'"{path}"', f'"{path}-worker"').replace(f'sqlite:///{path}"', f'sqlite:///{path}-worker"')
    copy = config.with_name(config.stem + "-worker.toml")
    copy.write_text(text)
    moved = state_dirs(copy)
    if set(moved) & set(paths):
        raise SystemExit(f"could not move every state path of {config} for the worker: {sorted(set(moved) & set(paths))}")
    return copy, moved


def reset(paths: list[Path]) -> None:
    for path in paths:
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def measure(args: argparse.Namespace, chain: list[str], paths: list[Path], rows: list[dict], warm) -> None:
    for i in range(args.pairs):
        order = ("baseline", "chain", "worker") if args.worker else ("baseline", "chain")
        order = order if i % 2 == 0 else order[::-1]
        got = {}
        for which in order:
            if which == "chain":
                reset(paths)
                got[which] = timed(chain)
            elif which == "worker":
                got[which] = (warm.run(args.target)["wall_seconds"], None)
            else:
                got[which] = timed(args.baseline, shell=True)
                if args.cleanup:
                    subprocess.run(args.cleanup, shell=True, check=True)
        (bw, bc), (cw, cc) = got["baseline"], got["chain"]
        rows.append({"baseline_s": round(bw, 2), "baseline_cpu": round(bc, 2), "chain_s": round(cw, 2), "chain_cpu": round(cc, 2),
                     "ratio": round(cw / bw, 3), "first": order[0]})
        on_worker = ""
        if "worker" in got:
            ww = got["worker"][0]
            rows[-1].update(worker_s=round(ww, 2), worker_ratio=round(ww / bw, 3))
            on_worker = f", on a worker {ww:.2f} s: {ww / bw:.2f}x"
        print(f"pair {i + 1}: baseline {bw:.2f} s ({bc:.1f} CPU-s), chain {cw:.2f} s ({cc:.1f} CPU-s): {cw / bw:.2f}x{on_worker}"
              f"  [{order[0]} first; load {os.getloadavg()[0]:.1f}]", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, type=Path)
    parser.add_argument("--target", required=True)
    parser.add_argument("--baseline", required=True, help="shell command timed as the goal's baseline")
    parser.add_argument("--cleanup", default=None, help="shell command run after each baseline, not timed")
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--worker", action="store_true", help="time the chain on a running worker too (needs redis-server)")
    args = parser.parse_args()
    chain = [sys.executable, "-m", "backup_tasks.cli", "--config", str(args.config), "--json", "backup", args.target, "--wait"]
    paths = state_dirs(args.config)
    rows = []
    warm = worker_paths = None
    if args.worker:
        worker_config, worker_paths = worker_copy(args.config, paths)
        reset(worker_paths)
        warm = files.WarmWorker(worker_config, args.config.parent / "pairs-worker.log")
        warm.run(args.target)
    try:
        measure(args, chain, paths, rows, warm)
    finally:
        if warm is not None:
            warm.stop()
            reset(worker_paths)
        reset(paths)
    ratios = [r["ratio"] for r in rows]
    print(f"median of {len(rows)} pair ratios: {statistics.median(ratios):.2f}x (range {min(ratios):.2f}-{max(ratios):.2f}); "
          f"medians: baseline {statistics.median(r['baseline_s'] for r in rows):.2f} s, chain {statistics.median(r['chain_s'] for r in rows):.2f} s")
    summary = {"target": args.target, "pairs": rows, "median_ratio": statistics.median(ratios)}
    if args.worker:
        on_worker = [r["worker_ratio"] for r in rows]
        summary["median_ratio_on_worker"] = statistics.median(on_worker)
        print(f"on a worker: median of {len(rows)} pair ratios {statistics.median(on_worker):.2f}x "
              f"(range {min(on_worker):.2f}-{max(on_worker):.2f}); median {statistics.median(r['worker_s'] for r in rows):.2f} s")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
