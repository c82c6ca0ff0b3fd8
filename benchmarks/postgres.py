#!/usr/bin/env python
"""Database benchmark: our chain and restore against plain pg_dump / pg_restore (and MariaDB's tools).

Run by hand (minutes; about 4x --size of transient disk):

    python benchmarks/postgres.py [--size 1.0 (0: MariaDB only)] [--jobs 2] [--mariadb-size 0.25] [--keep] [--workdir DIR]
                                  [--restore-only] [--repeat N]

In one run it

1. generates (or, with --keep, reuses) a PostgreSQL database of about ``--size`` GB of
   realistic rows that compress 2-5x (md5 hex, words from a small vocabulary, numbers,
   timestamps, JSON; not pgbench's filler, which compresses 108x);
2. measures, one after the other on a warm cache:
   a. ``pg_dump -Fc -Z0 -f`` (the dump floor) and ``pg_dump -Fc -f`` (default compression),
      and the chain's passes done by the standard tools alone (floors.py: every hash the
      chain owes, zstd, age, sync, the read-back and ``pg_restore --list``),
   b. our chain ``backupctl backup bench-pg --wait --json`` (embedded: dump -> compress ->
      encrypt -> upload to a local tier -> verify, one stage after another), with per-stage
      seconds, and the same through a private Redis and a real ``celery worker -c 4``
      (``--concurrency``), where the stages overlap: each stage's start and end are printed,
   c. ``pg_restore -j N -d`` of the -Z0 file against ``backupctl restore --to-database --jobs N``,
      and the single-job pair (``pg_restore -d`` of the file vs our streamed restore), ``--repeat`` times
      alternately (medians), plus pg_restore alone split like ours (data from a pipe, then post-data -j N);
3. does the same for MariaDB with ``--mariadb-size`` GB: ``mariadb-dump`` to a file,
   our chain, ``mariadb DB < dump.sql`` against our restore;
4. prints a table, names the dominant stage, and writes JSON to benchmarks/out/postgres-<time>.json.

Databases it creates are dropped at the end unless --keep.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import psycopg2
import pymysql

from backup_tasks.records import keys as keys_mod

sys.path.insert(0, str(Path(__file__).resolve().parent))
from files import RedisDB, Worker, print_spans, stage_spans  # noqa: E402 - the files benchmark's worker harness
import floors  # noqa: E402 - the chain's passes by the standard tools alone

REPO = Path(__file__).resolve().parent.parent
OUT_DIR = REPO / "benchmarks" / "out"
PG = dict(host="127.0.0.1", port=5432, user="postgres")
PG_ENV = {**os.environ, "PGHOST": "127.0.0.1", "PGPORT": "5432", "PGUSER": "postgres"}
MY_ARGS = ["-h", "127.0.0.1", "-P", "3306", "-u", "root"]
PG_DB, MY_DB = "bench_pg_source", "bench_my_source"

PG_TABLES = """
CREATE TABLE accounts (id int PRIMARY KEY, name text, email text, country text, created_at timestamptz);
CREATE TABLE events (
    id bigint PRIMARY KEY, account_id int, kind text, created_at timestamptz, amount numeric(14, 2),
    session text, body text, attrs jsonb
);
"""
PG_FILL_ACCOUNTS = """
INSERT INTO accounts SELECT g, 'account ' || g, 'user' || g || '@example.org',
  (ARRAY['DE','FR','US','GB','NL','SE','PL','ES'])[1 + g % 8], timestamptz '2020-01-01' + g * interval '17 minutes'
FROM generate_series(1, 100000) g;
"""
#: one batch of events; ~430 bytes a row on disk, zstd -3 ratio about 3x
PG_FILL_EVENTS = """
INSERT INTO events SELECT g, 1 + (g::bigint * 7919 % 100000)::int,
  (ARRAY['login','logout','purchase','view','click','refund','search','share'])[1 + (g * 31) % 8],
  timestamptz '2023-01-01' + g * interval '2 seconds', ((g * 37) % 100000) / 100.0,
  md5(g::text || random()::text),
  (ARRAY['the','quick','brown','fox','jumps','over','lazy','dog','order','shipped','payment','received','customer',
         'support','ticket','closed'])[1 + (g * 13) % 16] || ' ' || md5(random()::text) || ' ' ||
  (ARRAY['status ok','status failed','retry scheduled','timeout','user cancelled'])[1 + (g * 17) % 5] || ' ' ||
  substr(md5(random()::text) || md5(random()::text), 1, 20 + (g % 40)) || ' ' || repeat('lorem ipsum ', 1 + g % 6),
  jsonb_build_object('ip', '10.' || (g % 256) || '.' || ((g / 256) % 256) || '.' || (g % 7),
                     'agent', (ARRAY['firefox','chrome','safari','curl'])[1 + g % 4], 'v', g % 100)
FROM generate_series(%s, %s) g;
"""


def sh(argv, **kw) -> float:
    started = time.monotonic()
    subprocess.run(argv, check=True, **kw)
    return time.monotonic() - started


def pg_exec(sql: str, db: str = "postgres", params=None) -> None:
    conn = psycopg2.connect(dbname=db, **PG)
    conn.autocommit = True
    conn.cursor().execute(sql, params)
    conn.close()


def pg_size(db: str) -> int:
    conn = psycopg2.connect(dbname=db, **PG)
    cur = conn.cursor()
    cur.execute("SELECT pg_database_size(current_database())")
    size = cur.fetchone()[0]
    conn.close()
    return size


def pg_exists(db: str) -> bool:
    conn = psycopg2.connect(dbname="postgres", **PG)
    cur = conn.cursor()
    cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db,))
    found = cur.fetchone() is not None
    conn.close()
    return found


def make_pg(size_gb: float) -> None:
    if pg_exists(PG_DB) and pg_size(PG_DB) > size_gb * 0.9e9:
        print(f"reusing {PG_DB} ({pg_size(PG_DB) / 1e9:.2f} GB)")
        return
    pg_exec(f"DROP DATABASE IF EXISTS {PG_DB}")
    pg_exec(f"CREATE DATABASE {PG_DB}")
    pg_exec(PG_TABLES + PG_FILL_ACCOUNTS, PG_DB)
    batch, start = 250_000, 1
    while pg_size(PG_DB) < size_gb * 1e9:
        pg_exec(PG_FILL_EVENTS.replace("%", "%%").replace("%%s", "%s"), PG_DB, (start, start + batch - 1))
        start += batch
        print(f"  generated {start - 1} events, {pg_size(PG_DB) / 1e9:.2f} GB", flush=True)
    pg_exec("CREATE INDEX events_account_idx ON events (account_id)", PG_DB)
    pg_exec("VACUUM ANALYZE", PG_DB)


def make_my(size_gb: float) -> None:
    conn = pymysql.connect(host="127.0.0.1", user="root", autocommit=True)
    cur = conn.cursor()
    cur.execute("SELECT SUM(DATA_LENGTH + INDEX_LENGTH) FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s", (MY_DB,))
    have = float(cur.fetchone()[0] or 0)
    if have and have > size_gb * 0.9e9:
        print(f"reusing {MY_DB} ({have / 1e9:.2f} GB)")
        return
    cur.execute(f"DROP DATABASE IF EXISTS {MY_DB}")
    cur.execute(f"CREATE DATABASE {MY_DB}")
    cur.execute(f"USE {MY_DB}")
    cur.execute("CREATE TABLE events (id BIGINT PRIMARY KEY, account_id INT, kind VARCHAR(16), created_at DATETIME, "
                "amount DECIMAL(14,2), session CHAR(32), body TEXT, INDEX (account_id))")
    start, batch = 1, 200_000
    while True:
        cur.execute("SELECT SUM(DATA_LENGTH + INDEX_LENGTH) FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s", (MY_DB,))
        have = float(cur.fetchone()[0] or 0)
        if have >= size_gb * 1e9:
            break
        cur.execute(
            "INSERT INTO events SELECT seq, 1 + (seq * 7919) % 100000, ELT(1 + seq % 8, 'login','logout','purchase','view','click',"
            "'refund','search','share'), '2023-01-01' + INTERVAL seq * 2 SECOND, (seq * 37 % 100000) / 100, MD5(RAND()), "
            "CONCAT(ELT(1 + seq % 6, 'order','shipped','payment','received','customer','ticket'), ' ', MD5(RAND()), ' ', "
            "ELT(1 + seq % 3, 'status ok', 'status failed', 'timeout'), ' ', REPEAT('lorem ipsum ', 1 + seq % 6)) "
            f"FROM seq_{start}_to_{start + batch - 1}")
        cur.execute("ANALYZE TABLE events")
        cur.fetchall()
        start += batch
        print(f"  generated {start - 1} rows, {have / 1e9:.2f} GB", flush=True)
    conn.close()


def zstd_ratio(path: Path) -> float:
    with open(path, "rb") as fh:
        sample = fh.read(64 << 20)
    import zstandard

    return len(sample) / len(zstandard.ZstdCompressor(level=3).compress(sample))


def backupctl(*args: str, config: Path) -> dict:
    done = subprocess.run([sys.executable, "-m", "backup_tasks.cli", "--config", str(config), "--json", *args],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"backupctl {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr[-3000:]}")
    return json.loads(done.stdout)


def timed_backupctl(*args, config) -> tuple[float, dict]:
    started = time.monotonic()
    out = backupctl(*args, config=config)
    return time.monotonic() - started, out


def drop_pg(db: str) -> None:
    pg_exec(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


def drop_my(db: str) -> None:
    conn = pymysql.connect(host="127.0.0.1", user="root", autocommit=True)
    conn.cursor().execute(f"DROP DATABASE IF EXISTS `{db}`")
    conn.close()


def stage_table(doc: dict, verify_seconds: float | None) -> dict:
    stages = dict(doc["timings"])
    if verify_seconds is not None:
        stages["verify"] = round(verify_seconds, 3)
    return stages


def chain_on_worker(target: str, work: Path, config: Path, concurrency: int) -> dict:
    """The chain through a private Redis and a real worker: wall time and each stage's start and end."""
    db = RedisDB()
    logfile = work / f"worker-{target}.log"
    try:
        worker = Worker(config, db.url, logfile, concurrency=concurrency)
        try:
            env = {**os.environ, "BACKUP_BROKER_URL": db.url}
            started, started_at = time.monotonic(), time.time()
            done = subprocess.run([sys.executable, "-m", "backup_tasks.cli", "--config", str(config), "--json",
                                   "backup", target, "--wait"], capture_output=True, text=True, env=env)
            wall = time.monotonic() - started
            time.sleep(0.5)  # the worker logs the last stage's end just after the run is recorded
        finally:
            worker.stop()
        if done.returncode != 0:
            raise SystemExit(f"backup through the worker failed:\n{done.stdout}\n{done.stderr[-3000:]}\n"
                             f"{logfile.read_text()[-5000:]}")
        return {"seconds": wall, "concurrency": concurrency, "stage_spans": stage_spans(logfile, started_at),
                "id": json.loads(done.stdout)["id"]}
    finally:
        db.release()


def bench_pg(work: Path, config: Path, jobs: int, concurrency: int = 4, *, restore_only: bool = False, repeat: int = 1) -> dict:
    r: dict = {"database_bytes": pg_size(PG_DB)}
    floor = work / "floor.pgdump"
    r["pg_dump_Z0_seconds"] = sh(["pg_dump", "-Fc", "-Z0", "-f", str(floor), PG_DB], env=PG_ENV)
    r["pg_dump_Z0_bytes"] = floor.stat().st_size
    r["zstd3_ratio_of_dump_sample"] = round(zstd_ratio(floor), 2)
    if not restore_only:
        default = work / "default.pgdump"
        r["pg_dump_Fc_seconds"] = sh(["pg_dump", "-Fc", "-f", str(default), PG_DB], env=PG_ENV)
        r["pg_dump_Fc_bytes"] = default.stat().st_size
        default.unlink()
        r["tools_floor"] = floors.chain_floor(f"pg_dump -Fc -Z0 {PG_DB}", "pg_restore --list > /dev/null", *_keys(work),
                                              work / "floor.obj", env=PG_ENV)

    wall, info = timed_backupctl("backup", "bench-pg", "--wait", config=config)
    doc = backupctl("show", info["id"], config=config)["manifest"]
    r["chain_seconds"] = wall
    r["chain_stages"] = stage_table(doc, (info.get("verification") or {}).get("duration_seconds"))
    r["chain_stored_bytes"] = info["size_stored"]
    if not restore_only:
        r["worker_chain"] = chain_on_worker("bench-pg", work, config, concurrency)

    def ours(db: str, n: int) -> float:  # a parallel restore's phases are kept too
        wall, out = timed_backupctl("restore", info["id"], "--to-database", db, "--jobs", str(n), config=config)
        r.setdefault(f"ours_restore_j{n}_phases", []).extend([out["load_seconds"]] if "load_seconds" in out else [])
        return wall
    for n in sorted({1, jobs}):
        for _ in range(repeat):  # alternate raw and ours, so that a neighbour's burst hits both alike
            r.setdefault(f"pg_restore_j{n}_runs", []).append(timed_into(f"bench_pg_raw_{n}", lambda db: sh(
                ["pg_restore", "--no-owner", "--no-acl", "-j", str(n), "-d", db, str(floor)], env=PG_ENV)))
            r.setdefault(f"ours_restore_j{n}_runs", []).append(timed_into(f"bench_pg_ours_{n}", lambda db: ours(db, n), create=False))
            if n > 1:  # what pg_restore alone does with our split: data from a pipe, then post-data with n jobs
                r.setdefault(f"pg_restore_split_j{n}_runs", []).append(timed_into(f"bench_pg_split_{n}", lambda db: sh(
                    ["sh", "-c", f'pg_restore --no-owner --no-acl --section=pre-data --section=data -d {db} < "{floor}" && '
                     f'pg_restore --no-owner --no-acl --section=post-data -j {n} -d {db} "{floor}"'], env=PG_ENV)))
        for key in [k for k in r if k.endswith(f"_j{n}_runs")]:
            r[key.replace("_runs", "_seconds")] = statistics.median(r[key])
    floor.unlink()
    return r


def _keys(work: Path) -> tuple[str, Path]:
    """The benchmark's age recipient and identity, for the tools-alone floor."""
    return (work / "keys" / keys_mod.RECIPIENT_FILE).read_text().strip(), work / "keys" / keys_mod.IDENTITY_FILE


def timed_into(db: str, run, *, create: bool = True) -> float:
    """Seconds ``run(db)`` takes, into a fresh database (created first unless ours, which creates its own)."""
    drop_pg(db)
    if create:
        pg_exec(f"CREATE DATABASE {db}")
    try:
        return run(db)
    finally:
        drop_pg(db)


def bench_my(work: Path, config: Path, concurrency: int = 4) -> dict:
    r: dict = {}
    dump = work / "dump.sql"
    with open(dump, "wb") as fh:
        r["mariadb_dump_seconds"] = sh(["mariadb-dump", *MY_ARGS, "--single-transaction", "--routines", "--triggers", "--events",
                                        "--hex-blob", MY_DB], stdout=fh)
    r["mariadb_dump_bytes"] = dump.stat().st_size
    r["zstd3_ratio_of_dump_sample"] = round(zstd_ratio(dump), 2)
    dump_argv = " ".join(["mariadb-dump", *MY_ARGS, "--single-transaction", "--routines", "--triggers", "--events", "--hex-blob", MY_DB])
    r["tools_floor"] = floors.chain_floor(dump_argv, "grep -a -c '^CREATE TABLE' > /dev/null", *_keys(work), work / "floor.obj")
    wall, info = timed_backupctl("backup", "bench-my", "--wait", config=config)
    doc = backupctl("show", info["id"], config=config)["manifest"]
    r["chain_seconds"] = wall
    r["chain_stages"] = stage_table(doc, (info.get("verification") or {}).get("duration_seconds"))
    r["chain_stored_bytes"] = info["size_stored"]
    r["worker_chain"] = chain_on_worker("bench-my", work, config, concurrency)
    drop_my("bench_my_raw")
    drop_my("bench_my_ours")
    conn = pymysql.connect(host="127.0.0.1", user="root", autocommit=True)
    conn.cursor().execute("CREATE DATABASE bench_my_raw")
    conn.close()
    with open(dump, "rb") as fh:
        r["mariadb_restore_seconds"] = sh(["mariadb", *MY_ARGS, "bench_my_raw"], stdin=fh)
    wall, _ = timed_backupctl("restore", info["id"], "--to-database", "bench_my_ours", config=config)
    r["ours_restore_seconds"] = wall
    drop_my("bench_my_raw")
    drop_my("bench_my_ours")
    dump.unlink()
    return r


def report(pg: dict | None, my: dict | None) -> None:
    if pg:
        _report_pg(pg)
    if my:
        _report_my(my)


def _report_pg(pg: dict) -> None:
    f = pg["pg_dump_Z0_seconds"]
    mb = pg["database_bytes"] / 1e6
    print(f"\nPostgreSQL: database {mb:.0f} MB, -Z0 dump {pg['pg_dump_Z0_bytes'] / 1e6:.0f} MB (zstd -3 ratio {pg['zstd3_ratio_of_dump_sample']}x)")
    rows = [
        ("pg_dump -Fc -Z0 (floor)", f, pg["pg_dump_Z0_bytes"]),
        *([("pg_dump -Fc (default)", pg["pg_dump_Fc_seconds"], pg["pg_dump_Fc_bytes"])] if "pg_dump_Fc_seconds" in pg else []),
        ("our chain (dump..verify)", pg["chain_seconds"], pg["chain_stored_bytes"]),
    ]
    for name, secs, size in rows:
        print(f"  {name:28} {secs:7.1f} s  {secs / f:5.2f}x floor  {size / 1e6:8.0f} MB  {mb / secs:6.0f} MB/s of database")
    if "tools_floor" in pg:
        _print_floor(pg["tools_floor"], f, pg["chain_seconds"])
    stages = pg["chain_stages"]
    print("  chain stages: " + ", ".join(f"{k} {v:.1f}s" for k, v in stages.items()) + f"; dominant: {max(stages, key=stages.get)}")
    if "worker_chain" in pg:
        _print_worker_chain(pg["worker_chain"], f)
    for key in sorted(k for k in pg if k.startswith("pg_restore_j") and k.endswith("_seconds")):
        n = key.split("_j")[1].split("_")[0]
        raw, ours, split = pg[key], pg[f"ours_restore_j{n}_seconds"], pg.get(f"pg_restore_split_j{n}_seconds")
        print(f"  restore -j {n} (median of {len(pg[f'pg_restore_j{n}_runs'])}): pg_restore {raw:.1f} s, ours {ours:.1f} s "
              f"({ours / raw:.2f}x)" + (f"; pg_restore data from a pipe + post-data -j {n}: {split:.1f} s" if split else ""))
    if "pg_dump_Fc_seconds" in pg:
        print(f"  targets: chain <= 2.0x floor: {pg['chain_seconds'] / f:.2f}x; faster than pg_dump -Fc: {pg['chain_seconds'] < pg['pg_dump_Fc_seconds']}; "
              f"artifact smaller than -Fc: {pg['chain_stored_bytes'] < pg['pg_dump_Fc_bytes']}")


def _report_my(my: dict) -> None:
    d = my["mariadb_dump_seconds"]
    print(f"\nMariaDB: dump {my['mariadb_dump_bytes'] / 1e6:.0f} MB (zstd -3 ratio {my['zstd3_ratio_of_dump_sample']}x)")
    print(f"  mariadb-dump > file        {d:7.1f} s")
    print(f"  our chain (dump..verify)   {my['chain_seconds']:7.1f} s  {my['chain_seconds'] / d:5.2f}x  stored {my['chain_stored_bytes'] / 1e6:.0f} MB")
    _print_floor(my["tools_floor"], d, my["chain_seconds"])
    st = my["chain_stages"]
    print("  chain stages: " + ", ".join(f"{k} {v:.1f}s" for k, v in st.items()) + f"; dominant: {max(st, key=st.get)}")
    _print_worker_chain(my["worker_chain"], d)
    print(f"  restore: mariadb < dump.sql {my['mariadb_restore_seconds']:.1f} s, ours {my['ours_restore_seconds']:.1f} s "
          f"({my['ours_restore_seconds'] / my['mariadb_restore_seconds']:.2f}x)")


def _print_floor(floor: dict, dump_seconds: float, chain_seconds: float) -> None:
    print(f"  the chain's passes by the tools (hashes, zstd, age, sync, read-back, check; benchmarks/floors.py): "
          f"{floor['seconds']:.1f} s, {floor['cpu_seconds']:.1f} CPU-s = {floor['seconds'] / dump_seconds:.2f}x the dump; "
          f"ours {chain_seconds / floor['seconds']:.2f}x that")


def _print_worker_chain(w: dict, floor: float) -> None:
    print(f"  our chain on a worker -c {w['concurrency']} (stages overlap): {w['seconds']:.1f} s, {w['seconds'] / floor:.2f}x the dump")
    print_spans(w["stage_spans"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=float, default=1.0, help="PostgreSQL database size in GB (0 to skip PostgreSQL)")
    parser.add_argument("--mariadb-size", type=float, default=0.25, help="MariaDB table size in GB (0 to skip)")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=4, help="worker slots for the chain through Redis (1: no overlap)")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--keep", action="store_true", help="keep the generated source databases for the next run")
    parser.add_argument("--restore-only", action="store_true",
                        help="PostgreSQL restores only: skip pg_dump -Fc, the worker chain and MariaDB (one backup is still taken)")
    parser.add_argument("--repeat", type=int, default=1, help="measure each restore pair this many times; the median is reported")
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-db-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        if not (work / "keys" / keys_mod.RECIPIENT_FILE).exists():  # a rerun in the same --workdir uses its keys
            keys_mod.generate(work / "keys")
        state = work / "state"
        config = work / "targets.toml"
        config.write_text(
            "[settings]\n"
            f'staging_dir = "{state / "staging"}"\ncatalog_url = "sqlite:///{state / "catalog.db"}"\n'
            f'recipients_file = "{work / "keys" / keys_mod.RECIPIENT_FILE}"\nidentities_file = "{work / "keys" / keys_mod.IDENTITY_FILE}"\n'
            f'signing_key_file = "{work / "keys" / keys_mod.SIGNING_KEY_FILE}"\n'
            f'[tiers.local]\nkind = "local"\npath = "{state / "store"}"\n'
            f'[targets.bench-pg]\nkind = "postgres"\nhost = "bench"\ndsn = "postgresql://postgres@127.0.0.1:5432/{PG_DB}"\n'
            f'[targets.bench-my]\nkind = "mysql"\nhost = "bench"\ndsn = "mysql://root@127.0.0.1:3306/{MY_DB}"\n')
        pg = None
        if args.size > 0:
            print(f"generating ~{args.size} GB in PostgreSQL database {PG_DB}", flush=True)
            make_pg(args.size)
            pg = bench_pg(work, config, args.jobs, args.concurrency, restore_only=args.restore_only, repeat=args.repeat)
        my = None
        if args.mariadb_size > 0 and not args.restore_only:
            print(f"generating ~{args.mariadb_size} GB in MariaDB database {MY_DB}", flush=True)
            make_my(args.mariadb_size)
            my = bench_my(work, config, args.concurrency)
        report(pg, my)
        OUT_DIR.mkdir(parents=True, exist_ok=True)
        out = OUT_DIR / f"postgres-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}.json"
        out.write_text(json.dumps({"machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                                   "jobs": args.jobs, "postgres": pg, "mariadb": my}, indent=2))
        print(f"\nwrote {out}")
    finally:
        shutil.rmtree(work / "state", ignore_errors=True)
        if not args.keep:
            if args.size > 0:
                drop_pg(PG_DB)
            drop_my(MY_DB)
            if not args.workdir:
                shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
