#!/usr/bin/env python
"""Point-in-time recovery benchmark: base backup, WAL shipping lag, restore to a moment, each against PostgreSQL's own tools.

Run by hand, as root (the private cluster runs as the ``postgres`` OS user, like the tests'):

    python benchmarks/pitr_postgres.py [--size 1.0] [--load-seconds 300] [--rate 150] [--keep] [--base-only]

In one run it

1. starts a private PostgreSQL 15 cluster (tests/pitr_cluster.py: archive_command =
   ``backupctl wal push``, ``archive_timeout = 60``; the archive_command also copies each
   segment into a local directory, for the baseline's replay), and fills it with about
   ``--size`` GB: pgbench's tables plus a table of md5 text, so the data compresses about
   2x, not pgbench's filler alone (which compresses 100x and flatters a compressing chain);
2. base backup: ``pg_basebackup -Ft -X stream -c fast`` into a local directory (baseline),
   and ``pg_basebackup -D - -Ft -X none`` into a local file (what the dump stage streams),
   against ``backupctl backup T --wait`` (dump -> compress -> encrypt -> upload -> verify);
   the ratio is given for the whole chain and for the chain without verify (``--base-only``
   stops here);
3. WAL shipping under a steady pgbench write load (``-R --rate`` transactions/s for
   ``--load-seconds``), with ``backupctl wal ship`` every 60 s as beat runs it: the lag of a
   segment is from its arrival in the spool (archive_command done) to its upload being
   recorded in the catalog; p50, p99 and max over the segments of the run;
4. restore to a moment 5 s before the load ended: ``backupctl restore --to-time --start``
   (newest base before it, read back from the tier, + WAL through ``wal get``) against
   ``tar -x`` of the baseline's base.tar and pg_wal.tar plus PostgreSQL's own replay from
   the local WAL directory (``restore_command = 'cp ...'``), both waited for until promoted;
   and, as a floor for both base backup and restore, the same work by the standard tools
   alone (``pg_basebackup | zstd | age`` and its read-back; ``age -d | zstd -d | tar -x``
   and a restore_command of ``age -d | zstd -d``): the least any chain can take here;
5. prints the figures and ratios, and writes JSON to benchmarks/out/pitr_postgres-<time>.json.

Everything is under one temporary directory, removed at the end unless --keep.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from pitr_cluster import PG_BIN, PitrCluster, as_postgres  # noqa: E402
from databases import free_port  # noqa: E402
from backup_tasks.records import keys as keys_mod  # noqa: E402

OUT_DIR = REPO / "benchmarks" / "out"


def loadavg() -> float:
    return round(os.getloadavg()[0], 2)


def timed(fn, *args, **kw):
    started = time.monotonic()
    result = fn(*args, **kw)
    return round(time.monotonic() - started, 2), result


def fill(c: PitrCluster, size_gb: float) -> dict:
    """pgbench tables (a fifth of the size) plus md5 text rows for the rest."""
    scale = max(1, int(size_gb * 1024 * 0.2 / 15))
    pgbench = [str(PG_BIN / "pgbench"), "-h", "127.0.0.1", "-p", str(c.port), "-U", "postgres"]
    subprocess.run([*pgbench, "-i", "-q", "-s", str(scale), "postgres"], check=True, capture_output=True)
    c.sql("CREATE TABLE notes (id bigint PRIMARY KEY, account int, body text, extra text)")
    rows = int(size_gb * 1024 ** 3 * 0.8 / 190)
    step = 500_000
    for first in range(1, rows + 1, step):
        last = min(rows, first + step - 1)
        c.sql(f"INSERT INTO notes SELECT g, g % 100000, md5(g::text) || ' ' || md5((g * 7)::text) || ' order note ' || (g % 977), "
              f"md5((g * 13)::text) || md5((g * 17)::text) FROM generate_series({first}, {last}) g")
    c.sql("CHECKPOINT")
    size = c.sql("SELECT sum(pg_database_size(oid)) FROM pg_database")[0][0]
    return {"pgbench_scale": scale, "notes_rows": rows, "cluster_bytes": int(size)}


def base_backups(c: PitrCluster) -> dict:
    """Each measure starts with the archiver caught up, so that it waits only for the archiving of its own stop segment."""
    out = c.root / "pg_basebackup"
    as_postgres("mkdir", "-m", "700", str(out))
    c.switch_and_wait_archived(timeout=600)
    before = loadavg()
    baseline, _ = timed(as_postgres, str(PG_BIN / "pg_basebackup"), "-h", "127.0.0.1", "-p", str(c.port), "-U", "postgres",
                        "-D", str(out), "-Ft", "-X", "stream", "-c", "fast")
    # the floor of the streaming dump: the same tool writing its one tar to stdout (-X none: it waits for the archive)
    c.switch_and_wait_archived()
    streamed, _ = timed(as_postgres, "sh", "-c", f"{PG_BIN / 'pg_basebackup'} -h 127.0.0.1 -p {c.port} -U postgres "
                        f"-D - -Ft -X none -c fast > {c.root / 'stdout.tar'}")
    as_postgres("rm", "-f", str(c.root / "stdout.tar"))
    floor = tools_floor(c)
    c.switch_and_wait_archived()
    chain, info = timed(c.json, "backup", c.target, "--wait")
    shown = c.json("show", info["id"])
    timings = shown["manifest"].get("timings", {})
    # the stages overlap, so their seconds do not add up: the wall time to the stored object is the run's own record
    to_upload = round((_dt(shown["finished_at"]) - _dt(shown["created_at"])).total_seconds(), 2)
    # what the compressor costs: the same chain at zstd level 1 (the default is 3)
    c.switch_and_wait_archived()
    fast, fast_info = timed(c.json, "backup", c.target, "--wait", env={"BACKUP_COMPRESSION_LEVEL": "1"})
    fast_shown = c.json("show", fast_info["id"])
    fast_to_upload = round((_dt(fast_shown["finished_at"]) - _dt(fast_shown["created_at"])).total_seconds(), 2)
    return {"load_before": before, "baseline_seconds": baseline, "stdout_tar_seconds": streamed, "chain_seconds": chain,
            "zstd1_chain_seconds": fast, "zstd1_to_upload_seconds": fast_to_upload, "zstd1_stored_bytes": fast_info.get("size_stored"),
            "chain_to_upload_seconds": to_upload, "timings": timings, "dump_seconds": shown["manifest"]["source"]["dump_seconds"],
            "stored_bytes": info.get("size_stored") or info.get("stored_size"), "backup_id": info["id"],
            "ratio": round(chain / baseline, 2), "ratio_without_verify": round(to_upload / baseline, 2),
            "ratio_to_stdout_tar": round(chain / streamed, 2), "baseline_dir": str(out), **floor,
            "floor_ratio": round(floor["floor_seconds"] / baseline, 2)}


def tools_floor(c: PitrCluster) -> dict:
    """The chain's work done by the standard tools alone, the least any implementation of it can take here.

    ``pg_basebackup -D - | zstd -3 -T2 | age -r`` into a file (dump, compress at the
    default level, encrypt, store), then the read-back a verify needs: ``age -d | zstd -d``
    into a SHA-256. No Python, no catalog, no manifest, no per-file check: if this alone
    is over a ratio goal, no code of ours can meet it on this machine.
    """
    keys = c.root / "keys"
    recipient = next(line for line in (keys / keys_mod.RECIPIENT_FILE).read_text().splitlines() if line.startswith("age1"))
    stored = c.root / "floor.tar.zst.age"
    c.switch_and_wait_archived()
    cpu0 = os.times()
    store, _ = timed(as_postgres, "sh", "-c", f"{PG_BIN / 'pg_basebackup'} -h 127.0.0.1 -p {c.port} -U postgres "
                     f"-D - -Ft -X none -c fast | zstd -q -3 -T2 | age -r {recipient} > {stored}")
    identities = keys / keys_mod.IDENTITY_FILE
    check, _ = timed(subprocess.run, ["sh", "-c", f"age -d -i {identities} {stored} | zstd -q -d | openssl dgst -sha256"],
                     check=True, capture_output=True)
    cpu1 = os.times()
    return {"floor_object": str(stored), "floor_store_seconds": store, "floor_readback_seconds": check, "floor_seconds": round(store + check, 2),
            "floor_cpu_seconds": round(cpu1.children_user + cpu1.children_system - cpu0.children_user - cpu0.children_system, 2)}


def shipping_lag(c: PitrCluster, seconds: int, rate: int) -> dict:
    """pgbench at a steady rate; ``wal ship`` every 60 s; per segment: recorded upload minus arrival in the spool."""
    pgbench = [str(PG_BIN / "pgbench"), "-h", "127.0.0.1", "-p", str(c.port), "-U", "postgres", "-c", "2", "-j", "1",
               "-R", str(rate), "-T", str(seconds), "-n", "postgres"]
    started = datetime.now(timezone.utc)
    before = loadavg()
    load = subprocess.Popen(pgbench, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    stop = threading.Event()

    def beat():
        while not stop.wait(60 - time.time() % 60):  # on the minute, as beat's crontab runs wal-ship
            c.cli("wal", "ship", "--target", c.target, check=None)

    shipper = threading.Thread(target=beat)
    shipper.start()
    out, _ = load.communicate()
    load_end = datetime.now(timezone.utc)
    moment = c.sql("SELECT to_char((clock_timestamp() - interval '5 seconds') AT TIME ZONE 'UTC', "
                   "'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')")[0][0]
    c.switch_and_wait_archived()
    time.sleep(60 - time.time() % 60 + 2)  # one more beat tick ships the last one
    stop.set()
    shipper.join()
    c.cli("wal", "ship", "--target", c.target)
    db = sqlite3.connect(c.root / "catalog.db")
    rows = db.execute("SELECT name, closed_at, uploaded_at FROM log_objects WHERE kind = 'segment'").fetchall()
    db.close()
    lags = sorted((_dt(u) - _dt(cl)).total_seconds() for _n, cl, u in rows if _dt(cl) >= started)
    tps = next((line for line in out.splitlines() if line.startswith("tps")), "")
    return {"load_before": before, "load_seconds": seconds, "rate": rate, "pgbench_tps": tps, "segments": len(lags),
            "lag_p50": _pct(lags, 0.5), "lag_p99": _pct(lags, 0.99), "lag_max": round(lags[-1], 1) if lags else None,
            "load_ended": load_end.isoformat(), "moment": moment}


def _dt(text: str) -> datetime:
    value = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return round(values[min(len(values) - 1, int(q * len(values)))], 1)


def restores(c: PitrCluster, moment: str, baseline_dir: Path, local_wal: Path, floor_object: Path) -> dict:
    ours_dir, ours_port = c.root / "restored-ours", free_port()
    before = loadavg()
    ours, done = timed(c.json, "restore", "--target", c.target, "--to-time", moment, "--to-datadir", str(ours_dir),
                       "--start", "--port", str(ours_port))
    c.stop_datadir(ours_dir)
    theirs_dir = c.root / "restored-baseline"
    theirs, theirs_split, reached = replay(c, theirs_dir, moment, [
        ["tar", "-xf", str(baseline_dir / "base.tar"), "-C", str(theirs_dir)],
        ["tar", "-xf", str(baseline_dir / "pg_wal.tar"), "-C", str(theirs_dir / "pg_wal")]], f"cp {local_wal}/%f %p")
    # the same restore by the tools alone, from what a chain stores: the base and every segment compressed and encrypted
    identity, sealed_wal = c.root / "floor-identity.txt", c.root / "floor-wal"
    as_postgres("sh", "-c", f"umask 077 && cat > {identity}", input=(c.root / "keys" / keys_mod.IDENTITY_FILE).read_text())
    recipient = next(line for line in (c.root / "keys" / keys_mod.RECIPIENT_FILE).read_text().splitlines() if line.startswith("age1"))
    as_postgres("sh", "-c", f"mkdir -m 700 {sealed_wal} && for f in {local_wal}/*; do zstd -q -3 < $f | age -r {recipient} "
                f"> {sealed_wal}/$(basename $f).age; done")
    floor_dir = c.root / "restored-floor"
    floor, floor_split, _ = replay(c, floor_dir, moment, [
        ["sh", "-c", f"age -d -i {identity} {floor_object} | zstd -q -d | tar -x -C {floor_dir}"]],
        f"test -f {sealed_wal}/%f.age && age -d -i {identity} {sealed_wal}/%f.age | zstd -q -d -f -o %p")
    return {"load_before": before, "ours_seconds": ours, "baseline_seconds": theirs, "ratio": round(ours / theirs, 2),
            "ours_extract_seconds": done.get("extract_seconds"), "ours_recovery_seconds": done.get("recovery_seconds"),
            "baseline_extract_seconds": theirs_split["extract"], "baseline_recovery_seconds": theirs_split["recovery"],
            "floor_seconds": floor, "floor_extract_seconds": floor_split["extract"], "floor_recovery_seconds": floor_split["recovery"],
            "floor_ratio": round(floor / theirs, 2),
            "moment": moment, "ours_reached": done.get("reached_time"), "baseline_reached": str(reached),
            "base_id": done.get("base_id")}


def replay(c: PitrCluster, datadir: Path, moment: str, extract: list[list[str]], restore_command: str) -> tuple[float, dict, str]:
    """Extract a base as the cluster's user, replay to ``moment`` through ``restore_command``, wait (0.5 s poll) until promoted."""
    port = free_port()
    as_postgres("mkdir", "-m", "700", str(datadir))
    as_postgres("mkdir", "-m", "700", str(datadir / "pg_wal"))
    started = time.monotonic()
    for argv in extract:
        as_postgres(*argv)
    extracted = round(time.monotonic() - started, 2)
    stamp = moment.replace("T", " ").replace("Z", "+00")  # the form the server's settings parser takes
    conf = (f"\nrestore_command = '{restore_command}'\nrecovery_target_time = '{stamp}'\n"
            "recovery_target_action = 'promote'\narchive_mode = 'off'\n")
    log = c.root / f"{datadir.name}.log"
    as_postgres("sh", "-c", f"cat >> {datadir}/postgresql.auto.conf && touch {datadir}/recovery.signal", input=conf)
    as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(datadir), "-W", "-l", str(log), "-o",
                f"-c port={port} -c listen_addresses=127.0.0.1 -c unix_socket_directories=''", "start")
    while True:  # the same 0.5 s poll as backupctl's wait for the end of recovery
        if as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(datadir), "status", check=False).returncode != 0:
            time.sleep(1)  # pg_ctl -W returns before the pid file exists
            if as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(datadir), "status", check=False).returncode != 0:
                raise RuntimeError(f"the restore into {datadir} stopped: {log.read_text()[-1500:]}")
        try:
            if not c.sql("SELECT pg_is_in_recovery()", port=port)[0][0]:
                break
        except Exception:  # noqa: BLE001 - not accepting connections yet
            pass
        time.sleep(0.5)
    seconds = round(time.monotonic() - started, 2)
    reached = c.sql("SELECT pg_last_xact_replay_timestamp()", port=port)[0][0]
    c.stop_datadir(datadir)
    return seconds, {"extract": extracted, "recovery": round(seconds - extracted, 2)}, str(reached)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=float, default=1.0, help="cluster size in GB")
    ap.add_argument("--load-seconds", type=int, default=300, help="pgbench steady load (the WAL restored is this long)")
    ap.add_argument("--rate", type=int, default=150, help="pgbench transactions per second")
    ap.add_argument("--keep", action="store_true", help="keep the cluster's directory")
    ap.add_argument("--base-only", action="store_true", help="measure the base backup only (no shipping, no restore)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: the private cluster runs as the postgres OS user")
    c = PitrCluster("bench")
    result: dict = {"started": datetime.now(timezone.utc).isoformat(), "host": os.uname().nodename, "cpus": os.cpu_count(),
                    "args": vars(args)}
    try:
        local_wal = c.root / "local-wal"
        as_postgres("mkdir", "-m", "700", str(local_wal))
        archive = c.sql("SHOW archive_command")[0][0]
        c.sql(f"ALTER SYSTEM SET archive_command = 'cp %p {local_wal}/%f && {archive.replace(chr(39), chr(39) * 2)}'")
        c.sql("ALTER SYSTEM SET archive_timeout = 60")
        c.sql("SELECT pg_reload_conf()")
        fill_seconds, result["data"] = timed(fill, c, args.size)
        result["data"]["fill_seconds"] = fill_seconds
        print(f"data: {result['data']}", flush=True)
        c.cli("wal", "ship", "--target", c.target)  # the fill's WAL, so the measured runs start with an empty spool
        result["base_backup"] = base_backups(c)
        print(f"base backup: {result['base_backup']}", flush=True)
        if not args.base_only:
            c.cli("wal", "ship", "--target", c.target)
            result["shipping"] = shipping_lag(c, args.load_seconds, args.rate)
            print(f"shipping: {result['shipping']}", flush=True)
            result["restore"] = restores(c, result["shipping"]["moment"], Path(result["base_backup"]["baseline_dir"]), local_wal,
                                         Path(result["base_backup"]["floor_object"]))
            print(f"restore: {result['restore']}", flush=True)
    finally:
        if args.keep:
            print(f"kept: {c.root}")
            c.stop_datadir(c.data)
        else:
            c.close()
    OUT_DIR.mkdir(exist_ok=True)
    out = OUT_DIR / f"pitr_postgres-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}.json"
    out.write_text(json.dumps(result, indent=1, default=str))
    b = result["base_backup"]
    print("\n| measure | ours | baseline | ratio | goal |\n|---|---|---|---|---|")
    print(f"| base backup ({result['data']['cluster_bytes'] / 1e9:.2f} GB) | {b['chain_seconds']} s (to upload {b['chain_to_upload_seconds']} s)"
          f" | {b['baseline_seconds']} s | {b['ratio']}x ({b['ratio_without_verify']}x without verify) | <= 1.5x |")
    print(f"| the same work by the tools alone (pg_basebackup \\| zstd -3 -T2 \\| age, then age -d \\| zstd -d \\| sha256)"
          f" | {b['floor_seconds']} s ({b['floor_store_seconds']} + {b['floor_readback_seconds']} s, {b['floor_cpu_seconds']} CPU-s)"
          f" | {b['baseline_seconds']} s | {b['floor_ratio']}x | - |")
    if args.base_only:
        print(f"at zstd level 1: {b['zstd1_chain_seconds']} s (to upload {b['zstd1_to_upload_seconds']} s) = "
              f"{round(b['zstd1_chain_seconds'] / b['baseline_seconds'], 2)}x; load average before: {b['load_before']}; written {out}")
        return
    s, r = result["shipping"], result["restore"]
    print(f"| WAL shipping lag, {s['segments']} segments | p50 {s['lag_p50']} s, p99 {s['lag_p99']} s, max {s['lag_max']} s | - | - | p99 <= 90 s |")
    print(f"| restore to a moment ({s['load_seconds']} s of pgbench WAL) | {r['ours_seconds']} s | {r['baseline_seconds']} s"
          f" | {r['ratio']}x | <= 1.3x |")
    print(f"| the same restore by the tools alone (age -d \\| zstd -d \\| tar -x, restore_command age -d \\| zstd -d) | {r['floor_seconds']} s"
          f" | {r['baseline_seconds']} s | {r['floor_ratio']}x | - |")
    print(f"  restore split, extract + replay: ours {r['ours_extract_seconds']} + {r['ours_recovery_seconds']} s, "
          f"baseline {r['baseline_extract_seconds']} + {r['baseline_recovery_seconds']} s, "
          f"tools alone {r['floor_extract_seconds']} + {r['floor_recovery_seconds']} s")
    print(f"load average before each: {b['load_before']}, {s['load_before']}, {r['load_before']}; written {out}")


if __name__ == "__main__":
    main()
