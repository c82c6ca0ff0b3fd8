#!/usr/bin/env python
"""MariaDB point-in-time recovery benchmark: shipping lag under writes, and restore-to-a-moment against the tools by hand.

Run by hand (a few minutes; it competes for the CPU with anything else running):

    python benchmarks/mysql_pitr.py [--rows 300000] [--seconds 60] [--ship-every 5] [--workdir DIR] [--keep]

1. **Shipping lag.** A writer commits small transactions without pause for ``--seconds``
   while shipping (``ops.binlog_ship.ship``, what ``backup.binlog_ship`` runs) is called
   every ``--ship-every`` seconds. Per shipped log: lag = recorded ``shipped_at`` minus its
   last event (the rotation that closed it). Target: p99 ≤ 90 s. The beat schedule adds up
   to a minute of waiting before a rotation; that is the RPO side, printed apart.
2. **Restore to a moment** (``restore --target --to-time --to-database``, which also
   downloads, decrypts, decompresses and checks every hash) against the same work by hand
   on plaintext files already at hand: ``mariadb DB < dump.sql`` then ``mariadb-binlog
   --start-position --stop-datetime --database FILES | mariadb DB``. Target: ≤ 1.2×.

Set-up: a private ``mariadbd --log-bin --binlog-format=ROW`` on a free port in a temporary
directory (as root with ``--user=root``), keys from ``records.keys.generate``, a local
tier, a SQLite catalog. Results are printed and written as JSON to
benchmarks/out/mysql_pitr-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import pymysql

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from backup_tasks import client, config  # noqa: E402
from backup_tasks.ops import runtime  # noqa: E402
from backup_tasks.ops.mysql_pitr.restore import restore_to_time  # noqa: E402
from backup_tasks.ops.mysql_pitr.ship import ship  # noqa: E402
from backup_tasks.ops import readback  # noqa: E402
from backup_tasks.records import keys  # noqa: E402
from backup_tasks.orchestration.celery_app import configure  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(root: Path) -> tuple[subprocess.Popen, int]:
    data = root / "data"
    subprocess.run(["mariadb-install-db", "--no-defaults", "--user=root", f"--datadir={data}",
                    "--auth-root-authentication-method=normal", "--skip-test-db"], capture_output=True, check=True)
    port = free_port()
    proc = subprocess.Popen(["mariadbd", "--no-defaults", "--user=root", f"--datadir={data}", f"--socket={root / 'sock'}",
                             f"--port={port}", "--bind-address=127.0.0.1", f"--log-bin={data / 'binlog'}", "--binlog-format=ROW",
                             "--server-id=1", "--skip-name-resolve", "--innodb-buffer-pool-size=256M"],
                            stdout=open(root / "server.log", "wb"), stderr=subprocess.STDOUT, start_new_session=True)
    for _ in range(300):
        try:
            pymysql.connect(host="127.0.0.1", port=port, user="root").close()
            return proc, port
        except pymysql.err.OperationalError:
            time.sleep(0.2)
    raise RuntimeError((root / "server.log").read_text())


def sql(port: int, database: str | None = None):
    return pymysql.connect(host="127.0.0.1", port=port, user="root", database=database, autocommit=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=300_000)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--ship-every", type=float, default=5)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    root = Path(args.workdir or tempfile.mkdtemp(prefix="bench-mypitr-"))
    proc, port = start_server(root)
    try:
        results = run(root, port, args)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    out = Path(__file__).parent / "out"
    out.mkdir(exist_ok=True)
    path = out / f"mysql_pitr-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps(results, indent=2, default=str))
    print(json.dumps(results, indent=2, default=str))
    print(f"written to {path}")


def run(root: Path, port: int, args) -> dict:
    conn = sql(port)
    conn.cursor().execute("CREATE DATABASE shop")
    cur = sql(port, "shop").cursor()
    cur.execute("CREATE TABLE orders (id INT AUTO_INCREMENT PRIMARY KEY, customer INT, note VARCHAR(200), amount DECIMAL(12,2))")
    for start in range(0, args.rows, 10_000):
        n = min(10_000, args.rows - start)
        cur.execute(f"INSERT INTO orders (customer, note, amount) SELECT seq % 997, CONCAT('order ', seq, ' ', MD5(seq)), "
                    f"seq / 7 FROM seq_1_to_{n}")
    made = keys.generate(root / "keys")
    cfg = root / "targets.toml"
    cfg.write_text(f"""[settings]
staging_dir = "{root / 'staging'}"
catalog_url = "sqlite:///{root / 'catalog.db'}"
recipients_file = "{made.directory / keys.RECIPIENT_FILE}"
identities_file = "{made.directory / keys.IDENTITY_FILE}"
signing_key_file = "{made.directory / keys.SIGNING_KEY_FILE}"

[tiers.local]
kind = "local"
path = "{root / 'store'}"

[targets.shop]
kind = "mysql"
host = "db"
dsn = "mysql://root@127.0.0.1:{port}/shop"
binlog = true
""")
    rt = runtime.install(runtime.Runtime(config.load(cfg)))
    configure(rt.settings)
    backup = client.enqueue_backup("shop", rt=rt).wait(timeout=3600)
    assert backup["status"] == "verified", backup
    ship(rt, "shop")

    stop = threading.Event()
    commits = [0]

    def writer():
        c = sql(port, "shop").cursor()
        while not stop.is_set():
            c.execute("INSERT INTO orders (customer, note, amount) VALUES (1, 'live', 1.5)")
            c.execute("UPDATE orders SET amount = amount + 1 WHERE id = %s", (commits[0] % args.rows + 1,))
            commits[0] += 1

    thread = threading.Thread(target=writer)
    thread.start()
    ship_seconds = []
    moment = None
    try:
        ends = time.monotonic() + args.seconds
        while time.monotonic() < ends:
            time.sleep(args.ship_every)
            started = time.monotonic()
            ship(rt, "shop")
            ship_seconds.append(time.monotonic() - started)
            if moment is None and time.monotonic() > ends - args.seconds / 2:
                c = sql(port).cursor()
                c.execute("SELECT UTC_TIMESTAMP(6)")
                moment = c.fetchone()[0].replace(tzinfo=timezone.utc)
    finally:
        stop.set()
        thread.join()
    ship(rt, "shop")
    rows = [r for r in rt.catalog.binlogs("shop") if r.shipped_at > backup_time(rt, backup["id"])]
    lags = sorted((r.shipped_at - r.last_event_at).total_seconds() for r in rows)

    # restore to the moment, through backup-tasks
    started = time.monotonic()
    result = restore_to_time(rt, "shop", moment.isoformat(), "shop_pitr")
    ours = time.monotonic() - started

    # the same by hand, on plaintext files already at hand
    plain = root / "plain"
    plain.mkdir()
    found = readback.locate(rt, rt.catalog.get(backup["id"]))
    with readback.plaintext(rt, found) as (stream, _stored, _plain), open(plain / "dump.sql", "wb") as fh:
        shutil.copyfileobj(stream, fh, 1 << 20)
    from backup_tasks.ops.mysql_pitr.restore import fetch

    by_name = {r.name: r for r in rt.catalog.binlogs("shop")}
    files = [fetch(rt, by_name[n], plain) for n in result["binlogs"]]
    sql(port).cursor().execute("CREATE DATABASE shop_hand")
    started = time.monotonic()
    with open(plain / "dump.sql", "rb") as fh:
        subprocess.run(["mariadb", "-h127.0.0.1", f"-P{port}", "-uroot", "shop_hand"], stdin=fh, check=True)
    decode = subprocess.Popen(["mariadb-binlog", f"--start-position={result['base']['position']}",
                               f"--stop-datetime={result['stop_datetime'].replace('T', ' ').rstrip('Z')}", "--database=shop",
                               "--rewrite-db=shop->shop_hand", *map(str, files)], stdout=subprocess.PIPE,
                              env={**os.environ, "TZ": "UTC"})
    subprocess.run(["mariadb", "-h127.0.0.1", f"-P{port}", "-uroot", "--binary-mode", "shop_hand"], stdin=decode.stdout, check=True)
    decode.wait()
    by_hand = time.monotonic() - started
    counts = []
    for db in ("shop_pitr", "shop_hand"):
        c = sql(port, db).cursor()
        c.execute("SELECT COUNT(*), SUM(amount) FROM orders")
        counts.append(c.fetchone())
    return {
        "rows": args.rows, "write_seconds": args.seconds, "commits": commits[0], "ship_every_seconds": args.ship_every,
        "dump_plain_bytes": backup.get("size_plain"),
        "shipping": {"logs": len(lags), "lag_p50_s": round(statistics.median(lags), 3) if lags else None,
                     "lag_p99_s": round(lags[max(0, int(len(lags) * 0.99) - 1)], 3) if lags else None,
                     "lag_max_s": round(max(lags), 3) if lags else None,
                     "ship_call_median_s": round(statistics.median(ship_seconds), 3) if ship_seconds else None,
                     "note": "lag = recorded shipped_at - last event (the rotation); event times have whole seconds"},
        "restore": {"backup_tasks_s": round(ours, 3), "by_hand_s": round(by_hand, 3), "ratio": round(ours / by_hand, 3),
                    "binlogs": len(result["binlogs"]), "transactions": result["transactions"],
                    "same_rows": counts[0] == counts[1], "counts": [list(map(str, c)) for c in counts]},
    }


def backup_time(rt, backup_id: str):
    return rt.catalog.get(backup_id).created_at


if __name__ == "__main__":
    main()
