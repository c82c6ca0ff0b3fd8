#!/usr/bin/env python
"""Per-file records and memory: manifest size and peak RSS of backup, verify and restore by file count.

Run by hand; a baseline commit and this checkout, in the same run, on the same trees:

    python benchmarks/listing.py [--files 20000,100000] [--baseline main] [--size-max 64] [--workdir DIR]
                                 [--versions baseline,ours] [--steps backup,verify,restore]

The 1M-file case: ``--files 1000000 --size-max 0 --versions ours --workdir /dev/shm``
(creating a million files on this machine's disk takes about 1 ms each, on tmpfs 35 µs;
the baseline's manifest alone would be about 250 MiB).

For every file count it generates a tree of that many small files (0..--size-max bytes,
1000 to a directory: the listing's cost, not the bytes, is what is measured), then for
each code version (``git archive`` of --baseline, and of HEAD, unpacked and put first on
PYTHONPATH) runs in a fresh state directory, each under ``/usr/bin/time -v``:

1. ``backupctl backup T --wait`` (embedded: dump, compress, encrypt, upload and verify in one process);
2. ``backupctl verify ID``;
3. ``backupctl restore ID --to DIR``;

and prints wall seconds, peak RSS and the signed manifest's and listing object's sizes,
with the ratio of this checkout to the baseline and the load average before each step
(the machine is shared: read the ratios, not the absolute figures). JSON goes to
benchmarks/out/listing-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable


def build_tree(root: Path, n: int, size_max: int) -> None:
    payload = os.urandom(size_max + 1)
    for i in range(n):
        folder = root / f"d{i // 1000:04d}"
        if i % 1000 == 0:
            folder.mkdir(parents=True)
        fd = os.open(folder / f"f{i:07d}.txt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(fd, payload[: (i * 7919) % (size_max + 1)])
        os.close(fd)


def snapshot(rev: str, dest: Path) -> str:
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", rev], check=True, capture_output=True,
                          text=True).stdout.strip()


def write_config(state: Path, keys: Path, tree: Path) -> Path:
    state.mkdir(parents=True)
    cfg = state / "targets.toml"
    cfg.write_text(
        "[settings]\n"
        f'staging_dir = "{state / "staging"}"\n'
        f'catalog_url = "sqlite:///{state / "catalog.db"}"\n'
        f'recipients_file = "{keys / "age-recipient.txt"}"\n'
        f'identities_file = "{keys / "age-identity.txt"}"\n'
        f'signing_key_file = "{keys / "signing.key"}"\n\n'
        f'[tiers.local]\nkind = "local"\npath = "{state / "store"}"\n\n'
        f'[targets.many]\nkind = "files"\npaths = ["{tree}"]\n'
    )
    return cfg


def timed(code: Path, cfg: Path, *args: str) -> dict:
    """One backupctl command under /usr/bin/time -v: wall, peak RSS, CPU seconds, its JSON answer."""
    out = cfg.parent / "time-v.txt"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("BACKUP_")}, "PYTHONPATH": str(code)}
    argv = ["/usr/bin/time", "-v", "-o", str(out), PY, "-m", "backup_tasks.cli", *args, "--json", "--config", str(cfg)]
    load = os.getloadavg()[0]
    started = time.monotonic()
    # cwd away from any checkout: python -m puts the working directory before PYTHONPATH
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=7200, cwd=cfg.parent)
    wall = time.monotonic() - started
    text = out.read_text()
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", text).group(1)) * 1024
    cpu = sum(float(x) for x in re.findall(r"(?:User|System) time \(seconds\): ([0-9.]+)", text))
    if done.returncode != 0:
        raise SystemExit(f"{args} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return {"wall_seconds": round(wall, 2), "peak_rss": rss, "cpu_seconds": round(cpu, 2), "loadavg_1m_before": load,
            "answer": json.loads(done.stdout)}


STEPS = ("backup", "verify", "restore")


def run_case(code: Path, work: Path, keys: Path, tree: Path, steps: tuple[str, ...] = STEPS) -> dict:
    cfg = write_config(work, keys, tree)
    backup = timed(code, cfg, "backup", "many", "--wait", "--timeout", "7200")
    backup_id = backup["answer"]["id"]
    assert backup["answer"]["status"] == "verified", backup["answer"]
    folder = work / "store" / "many" / backup_id
    sizes = {"manifest_bytes": (folder / "manifest.json").stat().st_size,
             "listing_bytes": sum(p.stat().st_size for p in folder.glob("listing.jsonl.zst*"))}
    out = {**sizes, "backup": backup}
    if "verify" in steps:
        out["verify"] = timed(code, cfg, "verify", backup_id)
    if "restore" in steps:
        dest = work / "restored"
        out["restore"] = timed(code, cfg, "restore", backup_id, "--to", str(dest))
        out["restored_files"] = sum(len(files) for _, _, files in os.walk(dest))
    for step in STEPS:
        out.get(step, {}).pop("answer", None)
    return out


def mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", default="20000,100000")
    parser.add_argument("--baseline", default="main")
    parser.add_argument("--size-max", type=int, default=64)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--versions", default="baseline,ours")
    parser.add_argument("--steps", default=",".join(STEPS), help="backup always runs; verify and restore may be left out")
    args = parser.parse_args()
    versions = args.versions.split(",")
    root = Path(tempfile.mkdtemp(prefix="bench-listing-", dir=args.workdir))
    results: dict = {"started": datetime.now(timezone.utc).isoformat(), "cases": {}}
    try:
        codes = {name: root / f"code-{name}" for name in versions}
        results["revisions"] = {name: snapshot(args.baseline if name == "baseline" else "HEAD", code)
                                for name, code in codes.items()}
        keys = root / "keys"
        subprocess.run([PY, "-c", f"from backup_tasks.records import keys; keys.generate(__import__('pathlib').Path({str(keys)!r}))"],
                       check=True, env={**os.environ, "PYTHONPATH": str(next(iter(codes.values())))}, cwd=root)
        for n in (int(x) for x in args.files.split(",")):
            tree = root / f"tree-{n}" / "srv"
            started = time.monotonic()
            build_tree(tree, n, args.size_max)
            print(f"== {n} files (tree built in {time.monotonic() - started:.1f} s)", flush=True)
            case = {}
            for name, code in codes.items():
                case[name] = run_case(code, root / f"state-{n}-{name}", keys, tree, tuple(args.steps.split(",")))
                shutil.rmtree(root / f"state-{n}-{name}")
                r = case[name]
                print(f"   {name:8} manifest {mib(r['manifest_bytes']):>10}  listing {mib(r['listing_bytes']):>9}  "
                      + "  ".join(f"{step} {r[step]['wall_seconds']:6.1f} s {mib(r[step]['peak_rss']):>10} "
                                  f"(load {r[step]['loadavg_1m_before']:.1f})" for step in STEPS if step in r),
                      flush=True)
                assert r.get("restored_files", n) == n, r["restored_files"]
            results["cases"][n] = case
            shutil.rmtree(tree.parent)
            if len(case) < 2:
                continue
            b, o = case["baseline"], case["ours"]
            print(f"   ratio    manifest {o['manifest_bytes'] / b['manifest_bytes']:.3f}  "
                  + "  ".join(f"{step} wall {o[step]['wall_seconds'] / b[step]['wall_seconds']:.2f} "
                              f"rss {o[step]['peak_rss'] / b[step]['peak_rss']:.2f}" for step in STEPS if step in o),
                  flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    out = REPO / "benchmarks" / "out"
    out.mkdir(exist_ok=True)
    path = out / f"listing-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps(results, indent=1))
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
