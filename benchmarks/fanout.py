#!/usr/bin/env python
"""Fan-out benchmark: 500 small SQLite targets through real Celery workers, 1 then 2 of them.

Run by hand (a few minutes; it competes for the CPU with anything else running):

    python benchmarks/fanout.py [--targets 500] [--latency-runs 100] [--catalog postgres|sqlite] [--workdir DIR]

It answers two questions about the orchestration (Celery, Redis, the result backend,
events, the per-target lock, progress reports, the catalog writes of the task layer):

1. **Overhead per chain.** The same stage functions (backup.start, dump, compress,
   encrypt, upload, verify_backup) are first called in a plain loop, in-process, for
   ``--latency-runs`` targets: that is the stage work of one chain. Then the same number
   of chains run one at a time through Redis and one worker; a chain's wall time is
   ``verified_at - created_at`` in the catalog (enqueue recorded → verification
   recorded). Overhead = median chain wall time − median plain-loop time. Target: ≤ 50 ms.
2. **Throughput.** All ``--targets`` are enqueued at once (``client.enqueue_backup``, as an
   application would), with one worker process (``-c 1``), then with two; backups per
   minute from the first enqueue to the last verification. Target: 2 workers ≥ 1.6× 1.

Set-up: a private ``redis-server`` on a free port (no persistence), keys from
backup_tasks.records.keys.generate, one SQLite database of ~300 rows per target, a local tier,
and a PostgreSQL catalog (database ``backup_bench_fanout`` on 127.0.0.1:5432, created and
dropped here; several workers share it, as in production) or, with ``--catalog sqlite``,
a SQLite file. Workers are real ``celery worker -P prefork -c 1`` processes in their own
process groups, stopped in a ``finally``. Results are printed and written as JSON to
benchmarks/out/fanout-<timestamp>.json; the workdir is deleted unless ``--keep``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
OUT_DIR = REPO / "benchmarks" / "out"
HOST = "bench"
PG_DB = "backup_bench_fanout"
PG_ADMIN = dict(host="127.0.0.1", port=5432, user="postgres", dbname="postgres")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_db(path: Path, rows: int = 300) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, customer TEXT, note TEXT, amount REAL)")
    conn.executemany("INSERT INTO orders (customer, note, amount) VALUES (?, ?, ?)",
                     [(f"c{i % 97}", f"order {i} " * (i % 5), i * 1.25) for i in range(rows)])
    conn.commit()
    conn.close()


def write_config(work: Path, n: int, catalog_url: str) -> Path:
    from backup_tasks.records import keys as keys_mod

    keys = work / "keys"
    keys_mod.generate(keys)
    dbs = work / "dbs"
    dbs.mkdir()
    lines = ["[settings]", f'staging_dir = "{work / "staging"}"', f'catalog_url = "{catalog_url}"',
             f'recipients_file = "{keys / keys_mod.RECIPIENT_FILE}"', f'identities_file = "{keys / keys_mod.IDENTITY_FILE}"',
             f'signing_key_file = "{keys / keys_mod.SIGNING_KEY_FILE}"', "",
             "[tiers.local]", 'kind = "local"', f'path = "{work / "store"}"', ""]
    for i in range(n):
        make_db(dbs / f"t{i:03d}.db")
        lines += [f"[targets.t{i:03d}]", 'kind = "sqlite"', f'host = "{HOST}"', f'path = "{dbs / f"t{i:03d}.db"}"', ""]
    path = work / "targets.toml"
    path.write_text("\n".join(lines))
    return path


class Redis:
    def __init__(self, work: Path) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--dir", str(work)], stdout=subprocess.DEVNULL,
                                     start_new_session=True)
        self.url = f"redis://127.0.0.1:{self.port}/0"
        import redis

        for _ in range(100):
            try:
                redis.Redis(port=self.port).ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(timeout=20)


class Worker:
    def __init__(self, config: Path, broker: str, name: str, log: Path) -> None:
        env = {**os.environ, "BACKUP_CONFIG": str(config), "BACKUP_BROKER_URL": broker, "PYTHONPATH": str(REPO)}
        argv = [sys.executable, "-m", "celery", "-A", "backup_tasks.orchestration.celery_app", "worker", "-P", "prefork", "-c", "1",
                "-Q", f"host.{HOST},verify", "-n", name, "-l", "WARNING", "--without-gossip", "--without-mingle", "-E",
                "-O", "fair"]
        self.log = log
        self.proc = subprocess.Popen(argv, env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, app, name: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited:\n{self.log.read_text()[-3000:]}")
            replies = app.control.ping(destination=[name], timeout=0.5)
            if replies:
                return
        raise RuntimeError(f"worker {name} not ready:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def plain_loop(rt, targets: list[str]) -> list[float]:
    """The stage work of one chain, per target: the same functions, no Celery, no broker."""
    from backup_tasks.ops import backup
    from backup_tasks.ops.verify import verify_backup

    seconds = []
    for name in targets:
        backup_id = backup.new_backup_id(name)
        started = time.perf_counter()
        ref = backup.start(rt, backup_id, name, "full")
        ref = backup.upload(rt, backup.encrypt(rt, backup.compress(rt, backup.dump(rt, ref))))
        verify_backup(rt, backup_id)
        seconds.append(time.perf_counter() - started)
    return seconds


def chain_wall(rt, backup_id: str) -> float:
    row = rt.catalog.get(backup_id)
    assert row.status == "verified", (backup_id, row.status, row.error)
    return (row.verified_at - row.created_at).total_seconds()


def one_at_a_time(rt, targets: list[str]) -> list[float]:
    from celery.result import AsyncResult

    from backup_tasks import client
    from backup_tasks.orchestration.celery_app import app

    walls = []
    for name in targets:
        run = client.enqueue_backup(name, rt=rt, actor="bench")
        AsyncResult(run.id, app=app).get(timeout=120)  # the run id is the chain's last task (verify)
        walls.append(chain_wall(rt, run.id))
    return walls


def fan_out(rt, targets: list[str]) -> dict:
    from backup_tasks import client

    started = time.time()
    runs = [client.enqueue_backup(name, rt=rt, actor="bench") for name in targets]
    enqueued = time.time() - started
    ids = {run.id for run in runs}
    deadline = time.monotonic() + 3600
    while True:
        rows = [r for r in rt.catalog.list() if r.id in ids]
        final = [r for r in rows if r.status in ("verified", "failed")]
        if len(final) == len(ids) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    failed = [(r.id, r.error) for r in final if r.status != "verified"]
    last = max(r.verified_at or r.finished_at for r in final).timestamp()
    seconds = last - started
    return {"chains": len(ids), "verified": len(final) - len(failed), "failed": failed[:5], "failed_count": len(failed),
            "enqueue_seconds": round(enqueued, 2), "seconds": round(seconds, 2),
            "backups_per_minute": round((len(final) - len(failed)) / seconds * 60, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", type=int, default=500)
    parser.add_argument("--latency-runs", type=int, default=100)
    parser.add_argument("--catalog", choices=("postgres", "sqlite"), default="postgres")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="fanout-", dir=args.workdir))
    if args.catalog == "postgres":
        import psycopg2

        admin = psycopg2.connect(**PG_ADMIN)
        admin.autocommit = True
        admin.cursor().execute(f"DROP DATABASE IF EXISTS {PG_DB}")
        admin.cursor().execute(f"CREATE DATABASE {PG_DB}")
        catalog_url = f"postgresql+psycopg2://postgres@127.0.0.1:5432/{PG_DB}"
    else:
        catalog_url = f"sqlite:///{work / 'catalog.db'}"
    redis_server = Redis(work)
    workers: list[Worker] = []
    results: dict = {"started": datetime.now(timezone.utc).isoformat(), "host": platform.node(), "cpus": os.cpu_count(),
                     "targets": args.targets, "latency_runs": args.latency_runs, "catalog": args.catalog,
                     "load_before": os.getloadavg()}
    try:
        t0 = time.monotonic()
        config_path = write_config(work, args.targets, catalog_url)
        print(f"set-up: {args.targets} SQLite targets in {time.monotonic() - t0:.1f}s ({work})", flush=True)

        from backup_tasks import config
        from backup_tasks.ops import runtime
        from backup_tasks.orchestration.celery_app import app, configure

        rt = runtime.install(runtime.Runtime(config.load(config_path, environ={**os.environ, "BACKUP_BROKER_URL": redis_server.url})))
        configure(rt.settings)
        names = sorted(rt.config.targets)
        sample = names[: args.latency_runs]

        plain = plain_loop(rt, sample)
        results["plain_loop"] = {"runs": len(plain), "median_ms": round(statistics.median(plain) * 1000, 1),
                                 "p90_ms": round(sorted(plain)[int(len(plain) * 0.9)] * 1000, 1)}
        print(f"plain loop: median {results['plain_loop']['median_ms']} ms per chain of stage work", flush=True)

        for count in (1, 2):
            for w in workers:
                w.stop()
            workers = [Worker(config_path, redis_server.url, f"w{i}@{HOST}", work / f"w{i}.log") for i in range(1, count + 1)]
            for i, w in enumerate(workers, 1):
                w.wait_ready(app, f"w{i}@{HOST}")
            if count == 1:
                walls = one_at_a_time(rt, sample)
                median_wall = statistics.median(walls)
                results["one_at_a_time"] = {"runs": len(walls), "median_ms": round(median_wall * 1000, 1),
                                            "p90_ms": round(sorted(walls)[int(len(walls) * 0.9)] * 1000, 1),
                                            "overhead_ms": round((median_wall - statistics.median(plain)) * 1000, 1)}
                print(f"one chain at a time: median {results['one_at_a_time']['median_ms']} ms, "
                      f"overhead {results['one_at_a_time']['overhead_ms']} ms per chain", flush=True)
            results["load_before_fanout_%d" % count] = os.getloadavg()
            outcome = fan_out(rt, names)
            outcome["amortized_ms_per_chain"] = round(outcome["seconds"] / max(outcome["verified"], 1) * 1000 * count, 1)
            results[f"fanout_{count}_worker{'s' if count > 1 else ''}"] = outcome
            print(f"{count} worker(s): {outcome['verified']}/{outcome['chains']} verified in {outcome['seconds']}s = "
                  f"{outcome['backups_per_minute']} backups/min (enqueue took {outcome['enqueue_seconds']}s)", flush=True)
        one, two = results["fanout_1_worker"], results["fanout_2_workers"]
        results["speedup_2_over_1"] = round(two["backups_per_minute"] / one["backups_per_minute"], 2)
        results["targets_met"] = {"overhead_le_50ms": results["one_at_a_time"]["overhead_ms"] <= 50,
                                  "speedup_ge_1_6": results["speedup_2_over_1"] >= 1.6}
        print(f"2 workers / 1 worker: {results['speedup_2_over_1']}x; targets met: {results['targets_met']}", flush=True)
    finally:
        for w in workers:
            w.stop()
        redis_server.stop()
        if args.catalog == "postgres":
            from backup_tasks.ops import runtime

            if runtime._current is not None:
                runtime._current.catalog.engine.dispose()
            admin.cursor().execute(f"DROP DATABASE IF EXISTS {PG_DB} WITH (FORCE)")
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    out = OUT_DIR / f"fanout-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}.json"
    out.write_text(json.dumps(results, indent=2))
    print(f"written {out}")


if __name__ == "__main__":
    main()
