"""Runbook: point-in-time recovery of a MariaDB target from a dump plus its shipped binary logs.

A private MariaDB with ``--log-bin --binlog-format=ROW`` on a free port (``binlog_mariadb``)
plays the production server; the shared one on :3306 has no binary log and is used only
to show that a binlog target refuses such a server. Rows change in batches with their
times taken from the server between them; the logs are shipped; restores to moments
between the batches must give exactly the rows as they were then.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path

import pymysql
import pytest

import beat_schedule
from backup_tasks import client, config, metrics
from backup_tasks.errors import PermanentError
from backup_tasks.ops.mysql_pitr.ship import ship
from backup_tasks.ops.watchdog import run_watchdog
from backup_tasks.records import events
from backup_tasks.records.catalog import Status
from backup_tasks.timefmt import parse
from conftest import run_cli, write_config
from databases import ProcessWatch, binlog_mariadb, my, my_names, unique  # noqa: F401


def pitr_target(name: str, port: int, database: str, *, user: str = "root", extra: str = "") -> str:
    return (f'[targets.{name}]\nkind = "mysql"\nhost = "db02"\ndsn = "mysql://{user}@127.0.0.1:{port}/{database}"\n'
            f"binlog = true\n{extra}")


@contextmanager
def mb(port: int, database: str | None = None):
    conn = pymysql.connect(host="127.0.0.1", port=port, user="root", database=database, autocommit=True)
    try:
        yield conn.cursor()
    finally:
        conn.close()


def rows(port: int, database: str) -> list[tuple]:
    with mb(port, database) as cur:
        cur.execute("SELECT id, name, qty FROM items ORDER BY id")
        return list(cur.fetchall())


def server_now(cur) -> str:
    """The server's clock, as the ISO time an operator would type (microseconds, Z)."""
    cur.execute("SELECT UTC_TIMESTAMP(6)")
    return cur.fetchone()[0].isoformat() + "Z"


def gtid_seqs(port: int) -> list[int]:
    """The sequence numbers of every GTID in the server's binary logs, in log order."""
    out = []
    with mb(port) as cur:
        cur.execute("SHOW BINARY LOGS")
        for (name, *_rest) in cur.fetchall():
            cur.execute(f"SHOW BINLOG EVENTS IN '{name}'")
            out += [int(row[5].split("GTID ")[1].split("-")[2].split()[0]) for row in cur.fetchall() if row[2] == "Gtid"]
    return out


def make_items(port: int, database: str, n: int = 5) -> None:
    with mb(port) as cur:
        cur.execute(f"CREATE DATABASE `{database}`")
    with mb(port, database) as cur:
        cur.execute("CREATE TABLE items (id INT PRIMARY KEY, name VARCHAR(40), qty INT)")
        cur.executemany("INSERT INTO items VALUES (%s, %s, %s)", [(i, f"item {i}", i * 10) for i in range(1, n + 1)])


def test_a_binlog_target_on_a_server_without_a_binary_log_fails_at_targets_and_at_backup(tmp_path, session_keys, my_names):
    database = my_names("bt_nobin")
    with my() as cur:
        cur.execute(f"CREATE DATABASE `{database}`")
    cfg = write_config(tmp_path / "targets.toml", session_keys, targets=pitr_target("nobin-db", 3306, database))
    refused = json.loads(run_cli("targets", "--json", config=cfg, check=2).stdout)["error"]
    assert "127.0.0.1:3306 writes no binary log (log_bin is OFF)" in refused["message"] and "'nobin-db'" in refused["message"]
    assert "log_bin" in refused["remedy"] and "binlog_format = ROW" in refused["remedy"]
    failed = json.loads(run_cli("backup", "nobin-db", "--wait", "--json", config=cfg, check=1).stdout)
    assert failed["status"] == Status.FAILED and "log_bin is OFF" in failed["error"]


def test_restore_to_two_moments_into_databases_of_other_names(binlog_mariadb, tmp_path, session_keys):
    port = binlog_mariadb
    source, user, password = unique("shop"), unique("pitr")[:16], "pw-" + unique("s3cr3t")
    make_items(port, source)
    with mb(port) as cur:
        cur.execute(f"CREATE USER '{user}'@'%%' IDENTIFIED BY %s", (password,))
        cur.execute(f"GRANT ALL ON *.* TO '{user}'@'%'")
    cfg = write_config(tmp_path / "targets.toml", session_keys,
                       targets=pitr_target("shop-db", port, source, user=user, extra='password = "env:BT_PITR_PW"\n'))
    env = {"BT_PITR_PW": password}
    backup = json.loads(run_cli("backup", "shop-db", "--wait", "--json", config=cfg, env=env, check=0).stdout)
    src = json.loads(run_cli("show", backup["id"], "--json", config=cfg, env=env, check=0).stdout)["manifest"]["source"]
    assert src["format"].endswith("--master-data=2 --gtid)")
    coords = src["binlog"]
    with mb(port) as cur:
        cur.execute("SHOW BINARY LOGS")
        assert coords["file"] in [r[0] for r in cur.fetchall()]
    assert coords["position"] > 4 and coords["gtid"].startswith("0-1-")

    with mb(port, source) as cur:  # batch 1, then the moment t1
        cur.execute("INSERT INTO items VALUES (6, 'item 6', 60), (7, 'item 7', 70)")
        cur.execute("UPDATE items SET qty = qty + 1 WHERE id IN (1, 2)")
        cur.execute("DELETE FROM items WHERE id = 3")
        t1 = server_now(cur)
    at_t1 = rows(port, source)
    time.sleep(1.1)  # binary log events carry whole seconds: the next batch lands in a later one
    with mb(port, source) as cur:  # batch 2, in one session with a temporary table, then the moment t2
        cur.execute("CREATE TEMPORARY TABLE incoming (id INT, name VARCHAR(40), qty INT)")
        cur.execute("INSERT INTO incoming VALUES (8, 'item 8', 80), (9, 'item 9', 90)")
        cur.execute("INSERT INTO items SELECT * FROM incoming")
        cur.execute("UPDATE items SET name = 'renamed' WHERE id = 6")
        cur.execute("DELETE FROM items WHERE id = 1")
        t2 = server_now(cur)
    at_t2 = rows(port, source)
    time.sleep(1.1)
    with mb(port, source) as cur:  # batch 3: after every moment restored to
        cur.execute("DELETE FROM items")
        cur.execute("INSERT INTO items VALUES (100, 'after t2', 0)")

    with ProcessWatch(("mariadb-binlog",)) as watch:
        window = json.loads(run_cli("pitr", "shop-db", "--ship", "--json", config=cfg, env=env, check=0).stdout)
    assert watch.seen_tool and not [c for c in watch.cmdlines if password.encode() in c]
    assert window["shipped_now"] and window["gaps"] == [] and window["ok"] and not window["broken"]
    assert parse(window["earliest"]) <= parse(t1) and parse(window["latest"]) >= parse(t2).replace(microsecond=0)

    one, two = unique("shop_t1"), unique("shop_t2")
    first = json.loads(run_cli("restore", "--target", "shop-db", "--to-time", t1, "--to-database", one, "--json",
                               config=cfg, env=env, check=0).stdout)
    assert rows(port, one) == at_t1
    assert first["base"]["backup_id"] == backup["id"] and first["rewrite_db"] and first["source_database"] == source
    assert first["last_event"]["gtid"].startswith("0-1-") and parse(first["last_event"]["at"]) <= parse(t1)
    second = json.loads(run_cli("restore", "--target", "shop-db", "--to-time", t2, "--to-database", two, "--json",
                                config=cfg, env=env, check=0).stdout)
    assert rows(port, two) == at_t2
    assert second["transactions"] > first["transactions"]
    # the replayed transactions entered this server's binary log under GTIDs of its own, not the source's again
    seqs = gtid_seqs(port)
    assert seqs == sorted(set(seqs))

    # the same restore again: refused over a database with tables, a dry run says so, --force replaces it
    refused = json.loads(run_cli("restore", "--target", "shop-db", "--to-time", t1, "--to-database", two, "--json",
                                 config=cfg, env=env, check=2).stdout)
    assert refused["error"]["type"] == "RestoreRefused" and rows(port, two) == at_t2
    dry = json.loads(run_cli("restore", "--target", "shop-db", "--to-time", t1, "--to-database", two, "--dry-run", "--json",
                             config=cfg, env=env, check=0).stdout)
    assert dry["needs_force"] and dry["binlogs"] and dry["base"]["file"] == coords["file"]
    run_cli("restore", "--target", "shop-db", "--to-time", t1, "--to-database", two, "--force", "--json", config=cfg, env=env, check=0)
    assert rows(port, two) == at_t1

    # times outside the window are bad input, and nothing is created for them
    before = (datetime.fromisoformat(coords["at"].replace("Z", "+00:00")) - timedelta(minutes=5)).isoformat()
    outside = json.loads(run_cli("restore", "--target", "shop-db", "--to-time", before, "--to-database", unique("x"), "--json",
                                 config=cfg, env=env, check=2).stdout)
    assert "before the earliest restorable time" in outside["error"]["message"]
    with mb(port) as cur:
        for database in (source, one, two):
            cur.execute(f"DROP DATABASE `{database}`")
        cur.execute(f"DROP USER '{user}'@'%'")


def test_shipping_is_idempotent_and_a_purged_binlog_is_a_gap_an_alert_and_a_refused_restore(binlog_mariadb, make_config, runtime_for):
    port = binlog_mariadb
    source = unique("gap")
    make_items(port, source)
    rt = runtime_for(make_config(pitr_target("gap-db", port, source)))
    assert client.enqueue_backup("gap-db", rt=rt).wait(timeout=120)["status"] == Status.VERIFIED

    first = ship(rt, "gap-db")
    with mb(port, source) as cur:
        cur.execute("INSERT INTO items VALUES (49, 'before the gap', 0)")
        before_gap = server_now(cur)
    at_before_gap = rows(port, source)
    time.sleep(1.1)
    again = ship(rt, "gap-db")  # the second run's rotation closed one more log: only that one is new
    assert first["shipped"] and len(again["shipped"]) == 1 and again["already_shipped"] >= len(first["shipped"])
    names = [r.name for r in rt.catalog.binlogs("gap-db")]
    assert len(names) == len(set(names)) == len(first["shipped"]) + 1
    stored = sorted(p.name for p in (Path(rt.config.tiers["local"].path) / "_binlogs" / "gap-db").iterdir())
    assert len(stored) == 2 * len(names)  # each log once, with its signed record
    with mb(port, source) as cur:
        cur.execute("SHOW MASTER STATUS")
        lost = cur.fetchone()[0]
        cur.execute("INSERT INTO items VALUES (50, 'lost with the purged log', 0)")
        cur.execute("FLUSH BINARY LOGS")
        cur.execute("INSERT INTO items VALUES (51, 'also lost', 0)")
        cur.execute("FLUSH BINARY LOGS")
        cur.execute("SHOW MASTER STATUS")
        active = cur.fetchone()[0]
        # What expire_logs_days does to logs shipping never reached (the server may keep the newest one a while longer).
        cur.execute(f"PURGE BINARY LOGS TO '{active}'")
        time.sleep(1.1)
        cur.execute("INSERT INTO items VALUES (52, 'after the gap', 0)")
        after_gap = server_now(cur)

    shipped = ship(rt, "gap-db")
    [gap] = shipped["gaps"]
    assert gap["after"] == names[-1] and gap["missing"][0] == lost
    [alert] = rt.catalog.events(kind=events.BINLOG_GAP)
    assert all(name in alert.message for name in gap["missing"]) and alert.target == "gap-db"
    ship(rt, "gap-db")
    assert len(rt.catalog.events(kind=events.BINLOG_GAP)) == 1  # alerted once, not at every run

    shown = run_cli("pitr", "gap-db", "--json", config=rt.config.file, check=1)
    window = json.loads(shown.stdout)
    assert window["broken"] and window["gaps"][0]["missing"] == gap["missing"]
    refused = json.loads(run_cli("restore", "--target", "gap-db", "--to-time", after_gap, "--to-database", unique("x"), "--json",
                                 config=rt.config.file, check=2).stdout)
    assert "gap" in refused["error"]["message"] and gap["missing"][0] in refused["error"]["message"]
    ok = json.loads(run_cli("restore", "--target", "gap-db", "--to-time", before_gap, "--to-database", unique("bt_before"), "--json",
                            config=rt.config.file, check=0).stdout)
    assert rows(port, ok["database"]) == at_before_gap

    # the server's log numbering starts again: the same names with other content are refused and alerted
    with mb(port) as cur:
        cur.execute("RESET MASTER")
        cur.execute(f"INSERT INTO `{source}`.items VALUES (60, 'after reset', 0)")
    with pytest.raises(PermanentError, match="differ from the stored ones"):
        ship(rt, "gap-db")
    conflict = rt.catalog.events(kind=events.BINLOG_CONFLICT)
    assert conflict and "was not stored" in conflict[0].message
    assert [r.name for r in rt.catalog.binlogs("gap-db")][:len(names)] == names
    with mb(port) as cur:
        cur.execute(f"DROP DATABASE `{source}`")
        cur.execute(f"DROP DATABASE `{ok['database']}`")


def test_watchdog_alerts_when_shipping_lags_and_metrics_expose_the_lag(binlog_mariadb, make_config, runtime_for):
    port = binlog_mariadb
    source = unique("lag")
    make_items(port, source, n=1)
    rt = runtime_for(make_config(pitr_target("lag-db", port, source, extra="pitr_rpo_minutes = 2\n")))
    key = f"{events.BINLOG_LAG}:lag-db"
    assert key in run_watchdog(rt)["opened"]  # never shipped
    text = metrics.exposition(rt).decode()
    assert 'backup_binlog_shipped{target="lag-db"} 0.0' in text and "backup_binlog_lag_seconds{" not in text

    ship(rt, "lag-db")
    newest = max(r.last_event_at for r in rt.catalog.binlogs("lag-db"))
    assert key in run_watchdog(rt, now=newest + timedelta(seconds=30))["resolved"]
    lag = [ln for ln in metrics.exposition(rt).decode().splitlines() if ln.startswith('backup_binlog_lag_seconds{target="lag-db"}')]
    assert len(lag) == 1 and float(lag[0].split()[-1]) >= 0
    assert 'backup_binlog_rpo_seconds{target="lag-db"} 120.0' in metrics.exposition(rt).decode()
    later = run_watchdog(rt, now=newest + timedelta(minutes=3))
    assert key in later["opened"]
    [alert] = [e for e in rt.catalog.events(kind=events.BINLOG_LAG) if "for 3 min" in e.message]
    assert "pitr_rpo_minutes of 2" in alert.message
    from backup_tasks.alerting.messages import from_event

    worded = from_event(kind=alert.kind, severity=alert.severity, message=alert.message, target=alert.target, host=alert.host,
                        backup_id=None, detail=alert.detail)
    assert worded.title == "binlog shipping of 'lag-db' lags behind its pitr_rpo_minutes"
    assert "backupctl pitr lag-db --ship" in worded.next_step
    with mb(port) as cur:
        cur.execute(f"DROP DATABASE `{source}`")


def test_a_statement_based_binlog_format_is_warned_about_with_the_reason(binlog_mariadb, tmp_path, session_keys):
    port = binlog_mariadb
    cfg = write_config(tmp_path / "targets.toml", session_keys, targets=pitr_target("fmt-db", port, "mysql"))
    with mb(port) as cur:
        cur.execute("SET GLOBAL binlog_format = 'MIXED'")
    try:
        shown = json.loads(run_cli("targets", "--json", config=cfg, check=0).stdout)
    finally:
        with mb(port) as cur:
            cur.execute("SET GLOBAL binlog_format = 'ROW'")
    state = shown["targets"]["fmt-db"]["binlog_server"]
    assert state["checked"] and state["binlog_format"] == "MIXED"
    assert "not ROW" in state["warnings"][0] and "non-deterministic" in state["warnings"][0]


def test_beat_ships_every_binlog_target_every_minute_on_its_host_queue(tmp_path, session_keys):
    cfg = write_config(tmp_path / "targets.toml", session_keys,
                       targets=pitr_target("a-db", 3306, "a") + "\n" + pitr_target("b-db", 3306, "b").replace("binlog = true", ""))
    jobs = beat_schedule.build(config.load(cfg))
    entry = jobs["binlog:a-db"]
    assert entry["task"] == "backup.binlog_ship" and entry["args"] == ("a-db",) and entry["options"] == {"queue": "host.db02"}
    assert str(entry["schedule"]).startswith("<crontab: * * * * *")
    assert "binlog:b-db" not in jobs


def test_a_worker_on_the_host_queue_ships_what_beat_publishes(binlog_mariadb, make_config, runtime_for, redis_url, start_worker):
    port = binlog_mariadb
    source = unique("beat")
    make_items(port, source, n=1)
    cfg = make_config(pitr_target("beat-db", port, source))
    start_worker(cfg, redis_url, ["host.db02"], name="w1@db02")
    rt = runtime_for(cfg, BACKUP_BROKER_URL=redis_url)
    entry = beat_schedule.build(rt.config)["binlog:beat-db"]
    from backup_tasks.orchestration.celery_app import app

    result = app.send_task(entry["task"], args=entry["args"], kwargs=entry["kwargs"], **entry["options"]).get(timeout=60)
    assert result["target"] == "beat-db" and result["shipped"]
    assert [r.name for r in rt.catalog.binlogs("beat-db")] == result["shipped"]
    with mb(port) as cur:
        cur.execute(f"DROP DATABASE `{source}`")


def test_a_shipping_run_killed_mid_upload_is_shipped_by_the_next_run_once(binlog_mariadb, tmp_path, make_config, runtime_for):
    port = binlog_mariadb
    source = unique("crash")
    with mb(port) as cur:  # earlier tests' logs are theirs: this catalog starts from the server's newest
        cur.execute("FLUSH BINARY LOGS")
        cur.execute("SHOW MASTER STATUS")
        cur.execute(f"PURGE BINARY LOGS TO '{cur.fetchone()[0]}'")
    make_items(port, source, n=1)
    store = tmp_path / "store"
    tiers = f'[tiers.local]\nkind = "local"\npath = "{store}"\nbandwidth_limit = "256KiB"\n'
    rt = runtime_for(make_config(pitr_target("crash-db", port, source), tiers=tiers))
    ship(rt, "crash-db")
    with mb(port, source) as cur:  # ~1.5 MB that neither compresses nor uploads fast: several seconds at the limit
        cur.execute("CREATE TABLE blobs (b BLOB)")
        cur.execute("INSERT INTO blobs SELECT RANDOM_BYTES(1024) FROM seq_1_to_1500")
    shipping = subprocess.Popen([sys.executable, "-m", "backup_tasks.cli", "pitr", "crash-db", "--ship", "--config",
                                 str(rt.config.file)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    objects = store / "_binlogs" / "crash-db"
    try:
        deadline = time.monotonic() + 60
        while not [p for p in objects.glob(".*.tmp") if p.stat().st_size > 256 << 10]:
            assert shipping.poll() is None and time.monotonic() < deadline, "the upload was never seen under way"
            time.sleep(0.05)
    finally:
        os.killpg(shipping.pid, signal.SIGKILL)
        shipping.wait()
    shipped_before = [r.name for r in rt.catalog.binlogs("crash-db")]

    again = ship(rt, "crash-db")
    names = [r.name for r in rt.catalog.binlogs("crash-db")]
    assert again["shipped"] and names == shipped_before + again["shipped"] and len(set(names)) == len(names)
    big = max(rt.catalog.binlogs("crash-db"), key=lambda r: r.size)
    assert big.size > 1 << 20 and big.name in again["shipped"]
    stored = sorted(p.name for p in objects.iterdir() if not p.name.startswith("."))
    assert len(stored) == 2 * len(names)  # each log once, with its signed record; the killed run's temp file is not an object
    with mb(port) as cur:
        cur.execute(f"DROP DATABASE `{source}`")


def test_cleanup_removes_the_binlogs_no_kept_dump_can_replay_and_a_lost_catalog_relearns_the_rest(binlog_mariadb, tmp_path,
                                                                                                  session_keys, make_config,
                                                                                                  runtime_for):
    from backup_tasks.ops.cleanup import run_cleanup

    port = binlog_mariadb
    source = unique("keep")
    make_items(port, source, n=2)
    rt = runtime_for(make_config(pitr_target("keep-db", port, source, extra="retention = { keep_last = 1 }\n")))
    old = client.enqueue_backup("keep-db", rt=rt).wait(timeout=120)
    ship(rt, "keep-db")
    with mb(port, source) as cur:
        cur.execute("INSERT INTO items VALUES (3, 'between the dumps', 30)")
    ship(rt, "keep-db")
    new = client.enqueue_backup("keep-db", rt=rt).wait(timeout=120)
    ship(rt, "keep-db")
    start = rt.catalog.get(new["id"]).manifest["source"]["binlog"]["file"]
    before = [r.name for r in rt.catalog.binlogs("keep-db")]
    older = [n for n in before if n < start]
    assert older and start in before

    dry = run_cleanup(rt, "keep-db", dry_run=True)
    assert [b["binlog"] for b in dry["binlogs_removed"]] == older and [r.name for r in rt.catalog.binlogs("keep-db")] == before
    done = run_cleanup(rt, "keep-db")
    assert done["deleted_backups"] == [old["id"]] and [b["binlog"] for b in done["binlogs_removed"]] == older
    assert [r.name for r in rt.catalog.binlogs("keep-db")] == [n for n in before if n >= start]
    stored = {p.name.split(".")[0] + "." + p.name.split(".")[1]
              for p in (Path(rt.config.tiers["local"].path) / "_binlogs" / "keep-db").iterdir()}
    assert stored == {n for n in before if n >= start}
    window = json.loads(run_cli("pitr", "keep-db", "--json", config=rt.config.file, check=0).stdout)
    assert window["ok"] and window["gaps"] == []

    # the catalog is lost: a new one, rebuilt from storage alone, knows the same logs and the same window
    lost = write_config(tmp_path / "rebuilt.toml", session_keys, targets=pitr_target("keep-db", port, source), state=tmp_path / "new",
                        tiers=f'[tiers.local]\nkind = "local"\npath = "{rt.config.tiers["local"].path}"\n')
    rebuilt = json.loads(run_cli("catalog", "rebuild", "--json", config=lost, check=0).stdout)
    assert rebuilt["binlogs"] == len(stored) and rebuilt["skipped"] == []
    again = json.loads(run_cli("pitr", "keep-db", "--json", config=lost, check=0).stdout)
    assert (again["earliest"], again["latest"], again["binlogs"]) == (window["earliest"], window["latest"], window["binlogs"])
    with mb(port) as cur:
        cur.execute(f"DROP DATABASE `{source}`")


def test_a_drill_of_a_binlog_target_restores_to_a_moment_under_writes_and_compares_exact_counts(binlog_mariadb, make_config,
                                                                                              runtime_for):
    import threading

    port = binlog_mariadb
    source = unique("pitrsrc")
    make_items(port, source, n=3)
    drill = f'drill = {{ server = "mysql://root@127.0.0.1:{port}/", checks = ["SELECT COUNT(*) >= 3 FROM items"] }}\n'
    rt = runtime_for(make_config(pitr_target("drill-db", port, source, extra=drill)))
    assert client.enqueue_backup("drill-db", rt=rt).wait(timeout=120)["status"] == Status.VERIFIED
    stop, written = threading.Event(), []

    def writer():  # the live database keeps changing while the drill takes its moment
        with mb(port, source) as cur:
            n = 1000
            while not stop.is_set():
                cur.execute("INSERT INTO items VALUES (%s, 'live', 1)", (n,))
                cur.execute("UPDATE items SET qty = qty + 1 WHERE id = 1")
                written.append(n)
                n += 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        while len(written) < 20:
            time.sleep(0.01)
        done = json.loads(run_cli("drill", "drill-db", "--json", config=rt.config.file, check=0).stdout)
    finally:
        stop.set()
        thread.join()
    assert done["result"] == "passed" and done["temp_database_dropped"]
    assert done["tables"]["missing"] == [] and done["tables"]["count_mismatches"] == {}
    assert 3 + 20 <= done["tables"]["rows_restored"] == done["tables"]["rows_manifest"] < 3 + len(written)
    assert done["moment"]["file"] in done["binlogs"] and done["transactions"] >= 20 and done["checks"][0]["passed"]
    with mb(port) as cur:
        cur.execute("SHOW DATABASES LIKE 'drill\\_%'")
        assert cur.fetchall() == ()
        cur.execute(f"DROP DATABASE `{source}`")
