#!/usr/bin/env python
"""Incremental files backups against our full, GNU tar's --listed-incremental and restic's second backup.

Run by hand (minutes; the tree of benchmarks/files.py, generated into --workdir):

    python benchmarks/incremental.py [--files 100000] [--size 1.5G] [--workdir DIR]

To measure a commit while the working tree is being edited, run it against a snapshot
(``git archive HEAD | tar -x -C /tmp/snap && PYTHONPATH=/tmp/snap python benchmarks/incremental.py``).

In one run it

1. generates the tree, keys and a targets file (the helpers of benchmarks/files.py);
2. takes the starting points: our full backup, GNU tar level 0 with a snapshot file,
   restic's first backup (when ``restic`` is on PATH; Debian's package);
3. changes the tree the same way for everyone: 1% of the files edited (spread over the
   tree), 200 added, 200 deleted, 50 directories renamed, 500 files chmodded;
4. runs our incremental and restic's second backup ``--pairs`` times each, order
   alternated, each from the same saved state (medians and their ratio: the figure
   for the restic goal on a shared machine); ``--pairs-only`` stops here (after the
   ``--worker`` rounds, if asked for);
5. measures after that change, each from a warm page cache: our incremental
   (``backupctl backup --type incremental --wait``, verify included), our full, GNU tar
   level 1 (``tar --listed-incremental | zstd -3 -T2 | age``) and restic's second backup;
   wall seconds and peak RSS of our CLI (``/usr/bin/time -v``), stored bytes;
6. restores the incremental and the full into empty directories and times both;
7. builds a 7-link chain on the full of step 5 (six more changes, each followed by an
   incremental), takes a full of the final tree, and restores the chain's last point
   and that full, timing both;
8. with ``--worker ROUNDS``: ROUNDS of our incremental on a warm Celery worker (enqueued
   from Python, no CLI start-up: how a scheduled incremental runs) against restic's next
   backup, each after a fresh change of the same mix (``on_worker``);
9. prints the results and the goals (incremental <= 0.15x our full, >= 3x faster than
   restic's second backup, worker RSS <= 200 MiB, restore of a 7-link chain's last
   point <= 1.3x the restore of a full) and writes them as JSON to
   benchmarks/out/incremental-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import files as fb  # noqa: E402 - the tree generator and helpers of the full-backup benchmark

from backup_tasks.records import keys as keys_mod  # noqa: E402

EDIT_SHARE = 0.01
ADDED = DELETED = 200
RENAMED_DIRS = 50
CHMODDED = 500
CHAIN_LINKS = 7  # a full and six incrementals


def backupctl(config: Path, *args: str) -> tuple[dict, float, int | None]:
    """Run backupctl under /usr/bin/time -v; (JSON result, wall seconds, peak RSS bytes)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKUP_")}
    time_file = config.parent / "time-v.txt"
    argv = ["/usr/bin/time", "-v", "-o", str(time_file), sys.executable, "-m", "backup_tasks.cli", *args, "--json",
            "--config", str(config)]
    started = time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, env=env)
    wall = round(time.monotonic() - started, 3)
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", time_file.read_text()) if time_file.exists() else None
    if done.returncode != 0:
        raise RuntimeError(f"backupctl {' '.join(args)} failed ({done.returncode}):\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    return json.loads(done.stdout), wall, int(m.group(1)) * 1024 if m else None


def change(tree: Path, seed: int) -> dict:
    """The same change for every tool: edits, additions, deletions, directory renames, chmods."""
    rng = random.Random(seed)
    files = sorted(p for p in tree.rglob("*") if p.is_file())
    edited = rng.sample(files, max(1, int(len(files) * EDIT_SHARE)))
    for path in edited:
        with open(path, "r+b") as fh:  # an in-place edit of a few bytes somewhere in the file
            size = path.stat().st_size
            fh.seek(rng.randrange(max(1, size)))
            fh.write(os.urandom(16))
    rest = [p for p in files if p not in set(edited)]
    for path in rng.sample(rest, DELETED):
        path.unlink()
    dirs = sorted({p.parent for p in files})
    for i in range(ADDED):
        (rng.choice(dirs) / f"added-{i}.bin").write_bytes(os.urandom(rng.randint(1024, 20 * 1024)))
    for path in rng.sample([p for p in tree.rglob("*") if p.is_file()], CHMODDED):
        path.chmod(0o640)
    renamed = 0
    for directory in rng.sample([d for d in dirs if d != tree and d.exists()], RENAMED_DIRS):
        if directory.exists():
            directory.rename(directory.with_name(directory.name + "-renamed"))
            renamed += 1
    return {"edited": len(edited), "added": ADDED, "deleted": DELETED, "renamed_dirs": renamed, "chmodded": CHMODDED}


def tar_level(tree: Path, snapshot: Path, out: Path, recipient: str) -> tuple[float, int]:
    fb.warm(tree)
    seconds, _ = fb.timed_sh(f"tar -cf - --listed-incremental={fb.q(snapshot)} -C / {fb.q(str(tree).lstrip('/'))} "
                             f"| zstd -3 -T2 -q | age -r {recipient} > {fb.q(out)}")
    return seconds, out.stat().st_size


def restic(repo: Path, tree: Path) -> float | None:
    if not shutil.which("restic"):
        return None
    env = {**os.environ, "RESTIC_REPOSITORY": str(repo), "RESTIC_PASSWORD": "benchmark"}
    if not repo.exists():
        subprocess.run(["restic", "init", "-q"], env=env, check=True)
    fb.warm(tree)
    started = time.monotonic()
    subprocess.run(["restic", "backup", "-q", str(tree)], env=env, check=True)
    return round(time.monotonic() - started, 3)


def paired(config: Path, work: Path, tree: Path, pairs: int) -> dict:
    """Our incremental and restic's second backup, ``pairs`` times each, order alternated, from one saved state.

    One run of each says little on a shared machine; pairs taken back to back see the
    same load. Before each run the catalog, store and restic repository are put back as
    they were after the starting points, so every run sees the same change.
    """
    saved = {d: work / f"{d.name}.pairs-saved" for d in (work / "state", work / "restic") if d.exists()}
    for live, copy in saved.items():
        fb.sh(f"cp -a {fb.q(live)} {fb.q(copy)}")

    def reset() -> None:
        for live, copy in saved.items():
            shutil.rmtree(live)
            fb.sh(f"cp -a {fb.q(copy)} {fb.q(live)}")

    def ours() -> dict:
        doc, wall, rss = backupctl(config, "backup", "tree", "--type", "incremental", "--wait")
        assert doc["type"] == "incremental", doc
        return {"wall_seconds": wall, "peak_rss": rss}

    def theirs() -> dict:
        return {"wall_seconds": restic(work / "restic", tree)}

    runs: dict[str, list] = {"ours": [], "restic": []}
    for n in range(pairs):
        for name, run in (("ours", ours), ("restic", theirs)) if n % 2 == 0 else (("restic", theirs), ("ours", ours)):
            if name == "restic" and not shutil.which("restic"):
                continue
            reset()
            fb.warm(tree)
            load = os.getloadavg()[0]
            before = os.times()
            result = run()
            after = os.times()
            runs[name].append({**result, "cpu_seconds": round(after.children_user + after.children_system
                                                              - before.children_user - before.children_system, 3),
                               "load_1m": round(load, 2)})
    reset()
    for copy in saved.values():
        shutil.rmtree(copy)
    median = {name: sorted(r["wall_seconds"] for r in rs)[len(rs) // 2] for name, rs in runs.items() if rs}
    return {"runs": runs, "median_wall_seconds": median,
            "restic_over_ours": round(median["restic"] / median["ours"], 2) if len(median) == 2 else None}


def on_worker(config: Path, work: Path, tree: Path, rounds: int, seed: int) -> dict:
    """Our incremental on a warm worker and restic's next backup, after the same fresh change, ``rounds`` times.

    How a scheduled incremental runs: beat enqueues it for a worker that is already up
    (files.py's ``WarmWorker``: timed from enqueue to verified, no CLI start-up). A warm
    worker cannot have its catalog copied back under it, so instead of resetting the state
    each round changes the tree anew (the same mix, another seed) and both tools back up
    that change on top of their own previous backup. A first round warms the worker and
    restic's cache and is not counted.
    """
    runs: dict[str, list] = {"ours_on_worker": [], "restic": []}
    warm_worker = fb.WarmWorker(config, work / "worker.log")
    try:
        for n in range(rounds + 1):
            change(tree, seed + 1000 + n)
            fb.sh("sync")
            order = [("ours_on_worker", lambda: warm_worker.run("tree", "incremental")),
                     ("restic", lambda: {"wall_seconds": restic(work / "restic", tree)})]
            for name, run in order if n % 2 == 0 else order[::-1]:
                if name == "restic" and not shutil.which("restic"):
                    continue
                fb.warm(tree)
                load = os.getloadavg()[0]
                result = run()
                if n:
                    runs[name].append({**result, "load_1m": round(load, 2)})
    finally:
        warm_worker.stop()
    median = {name: sorted(r["wall_seconds"] for r in rs)[len(rs) // 2] for name, rs in runs.items() if rs}
    ratios = sorted(t["wall_seconds"] / o["wall_seconds"] for o, t in zip(runs["ours_on_worker"], runs["restic"]))
    return {"runs": runs, "median_wall_seconds": median,
            "restic_over_ours_median_of_rounds": round(ratios[len(ratios) // 2], 2) if ratios else None}


def restore(config: Path, dest: Path, backup_id: str) -> dict:
    _, wall, rss = backupctl(config, "restore", backup_id, "--to", str(dest))
    shutil.rmtree(dest, ignore_errors=True)
    return {"wall_seconds": wall, "peak_rss": rss}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--size", type=fb.parse_size, default=fb.parse_size("1.5G"))
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/backup-tasks-incremental-bench"))
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--pairs", type=int, default=3, help="paired runs of our incremental and restic's second backup")
    parser.add_argument("--worker", type=int, default=0, metavar="ROUNDS",
                        help="at the end, ROUNDS of our incremental on a warm worker against restic (needs redis-server)")
    parser.add_argument("--pairs-only", action="store_true", help="stop after the pairs (and the --worker rounds)")
    args = parser.parse_args()

    work = args.workdir
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    tree = work / "tree"
    tree.mkdir()
    stats = fb.build_many(tree, args.files, args.size, args.seed)
    keys_dir = work / "keys"
    keys_mod.generate(keys_dir)
    recipient = (keys_dir / keys_mod.RECIPIENT_FILE).read_text().strip()
    config = fb.write_config(work / "targets.toml", keys_dir, work / "state", {"tree": tree})
    results: dict = {"tree": stats, "machine": os.uname().nodename, "at": datetime.now(timezone.utc).isoformat(),
                     "load_average_start": os.getloadavg()}

    fb.log(f"tree: {stats['files']} files, {fb.human(stats['bytes'])}; starting points")
    fb.warm(tree)
    first, wall, rss = backupctl(config, "backup", "tree", "--wait")
    results["start_full"] = {"wall_seconds": wall, "peak_rss": rss, "stored": first["size_stored"]}
    snapshot = work / "tar.snar"
    results["tar_level0"] = dict(zip(("seconds", "stored"), tar_level(tree, snapshot, work / "level0.tar.zst.age", recipient)))
    results["restic_first"] = restic(work / "restic", tree)

    results["change"] = change(tree, args.seed)
    fb.sh("sync")
    fb.log(f"changed: {results['change']}")
    if args.pairs:
        results["paired"] = paired(config, work, tree, args.pairs)
        fb.log(f"paired: {results['paired']['median_wall_seconds']}, restic/ours {results['paired']['restic_over_ours']}")
    if args.pairs_only:
        return finish(results, config, work, tree, args)

    fb.warm(tree)
    inc, wall, rss = backupctl(config, "backup", "tree", "--type", "incremental", "--wait")
    results["incremental"] = {"wall_seconds": wall, "peak_rss": rss, "stored": inc["size_stored"], "type": inc["type"],
                              "status": inc["status"]}
    shown, _, _ = backupctl(config, "show", inc["id"])
    results["incremental"]["changes"] = shown["manifest"]["source"].get("changes")
    results["incremental"]["changed_plain_bytes"] = shown["manifest"]["source"].get("bytes")
    fb.warm(tree)
    full, wall, rss = backupctl(config, "backup", "tree", "--wait")
    results["full"] = {"wall_seconds": wall, "peak_rss": rss, "stored": full["size_stored"]}
    level1 = work / "level1.snar"
    shutil.copy(snapshot, level1)
    results["tar_level1"] = dict(zip(("seconds", "stored"), tar_level(tree, level1, work / "level1.tar.zst.age", recipient)))
    results["restic_second"] = restic(work / "restic", tree)

    for name, backup_id in (("restore_incremental", inc["id"]), ("restore_full", full["id"])):
        results[name] = restore(config, work / name, backup_id)

    # A 7-link chain on the full above: six more changes, an incremental after each.
    chain = [full["id"]]
    for link in range(1, CHAIN_LINKS):
        change(tree, args.seed + link)
        fb.sh("sync")
        fb.warm(tree)
        point, wall, _ = backupctl(config, "backup", "tree", "--type", "incremental", "--wait")
        assert point["parent"] == chain[-1], (point, chain)
        chain.append(point["id"])
        results.setdefault("chain_incrementals_seconds", []).append(wall)
    fb.warm(tree)
    same_tree_full, _, _ = backupctl(config, "backup", "tree", "--wait")
    results["restore_chain_last"] = {**restore(config, work / "chain-last", chain[-1]), "links": len(chain)}
    results["restore_full_same_tree"] = restore(config, work / "full-same-tree", same_tree_full["id"])

    inc_s, full_s = results["incremental"]["wall_seconds"], results["full"]["wall_seconds"]
    results["goals"] = {
        "incremental_over_full": round(inc_s / full_s, 3),
        "incremental_le_0.15x_full": inc_s <= 0.15 * full_s,
        "restic_second_over_incremental": round(results["restic_second"] / inc_s, 2) if results["restic_second"] else None,
        "tar_level1_over_full": round(results["tar_level1"]["seconds"] / full_s, 3),
        "restore_incremental_over_full": round(results["restore_incremental"]["wall_seconds"]
                                               / results["restore_full"]["wall_seconds"], 2),
        "peak_rss_le_200MiB": max(r["peak_rss"] or 0 for r in (results["incremental"], results["full"])) <= 200 * fb.MiB,
        "restore_chain_last_over_full": round(results["restore_chain_last"]["wall_seconds"]
                                              / results["restore_full_same_tree"]["wall_seconds"], 2),
    }
    if results.get("paired"):
        results["goals"]["restic_second_over_incremental_paired"] = results["paired"]["restic_over_ours"]
    results["goals"]["restic_second_ge_3x_incremental"] = (results["goals"].get("restic_second_over_incremental_paired")
                                                            or results["goals"]["restic_second_over_incremental"] or 0) >= 3
    results["goals"]["restore_chain_last_le_1.3x_full"] = results["goals"]["restore_chain_last_over_full"] <= 1.3
    return finish(results, config, work, tree, args)


def finish(results: dict, config: Path, work: Path, tree: Path, args: argparse.Namespace) -> int:
    if args.worker:
        results["on_worker"] = on_worker(config, work, tree, args.worker, args.seed)
        fb.log(f"on a warm worker: {results['on_worker']['median_wall_seconds']}, "
               f"restic/ours {results['on_worker']['restic_over_ours_median_of_rounds']}")
    results["load_average"] = os.getloadavg()
    fb.log(json.dumps(results, indent=1))
    fb.OUT_DIR.mkdir(exist_ok=True)
    out = fb.OUT_DIR / f"incremental-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}.json"
    out.write_text(json.dumps(results, indent=1))
    fb.log(f"written: {out}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
