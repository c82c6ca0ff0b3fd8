"""Runbook: back up a SQLite database while the application keeps writing, restore it, compare."""

from __future__ import annotations

import json
import sqlite3
import threading
import time

from backup_tasks import client
from backup_tasks.records.catalog import Status
from conftest import run_cli


def make_app_db(path, rows=2000):
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, customer TEXT NOT NULL, note TEXT, amount REAL)")
    conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
    conn.executemany("INSERT INTO orders (customer, note, amount) VALUES (?, ?, ?)",
                     [(f"c{i % 97}", "ümlaut ✓ " * (i % 7), i * 1.25) for i in range(rows)])
    conn.executemany("INSERT INTO customers (name) VALUES (?)", [(f"name {i}",) for i in range(97)])
    conn.commit()
    conn.close()


def test_sqlite_backup_under_writes_restores_a_consistent_prefix(tmp_path, make_config, runtime_for):
    db = tmp_path / "app.db"
    make_app_db(db)
    rt = runtime_for(make_config(f'[targets.app-sqlite]\nkind = "sqlite"\npath = "{db}"\n'))

    stop = threading.Event()
    committed = []

    def writer():
        conn = sqlite3.connect(db, timeout=60)
        while not stop.is_set():
            cur = conn.execute("INSERT INTO orders (customer, note, amount) VALUES ('live', 'written during backup', 1)")
            conn.commit()
            committed.append(cur.lastrowid)
        conn.close()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        while len(committed) < 50:  # the application is really writing before the backup starts
            time.sleep(0.01)
        run = client.enqueue_backup("app-sqlite", rt=rt)
        info = run.wait(timeout=120)
        time.sleep(0.05)
    finally:
        stop.set()
        thread.join()
    assert info["status"] == Status.VERIFIED
    assert len(committed) > 50

    restored = tmp_path / "restored.db"
    done = run_cli("restore", run.id, "--to", str(restored), "--json", config=rt.config.file, check=0)
    assert json.loads(done.stdout)["restored_to"] == str(restored)

    conn = sqlite3.connect(restored)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    ids = [r[0] for r in conn.execute("SELECT id FROM orders ORDER BY id")]
    # a consistent prefix: every committed row up to some point, none after, no gaps
    assert ids == list(range(1, len(ids) + 1))
    assert 2000 <= len(ids) <= 2000 + len(committed)
    manifest = rt.catalog.get(run.id).manifest
    assert manifest["source"]["tables"] == {"orders": len(ids), "customers": 97}
    assert manifest["encryption"]["method"] == "age"
    assert oct((restored.stat().st_mode) & 0o777) == "0o600"


def test_a_missing_database_fails_the_run_with_its_path_and_nothing_is_stored(tmp_path, make_config, runtime_for):
    rt = runtime_for(make_config(f'[targets.gone]\nkind = "sqlite"\npath = "{tmp_path / "nope.db"}"\n'))
    run = client.enqueue_backup("gone", rt=rt)
    info = run.info()
    assert info["status"] == Status.FAILED
    assert "nope.db does not exist" in info["error"]
    assert not (tmp_path / "nope.db").exists()  # never created as an empty database
    assert list(rt.storage("local").list("")) == []
    assert not any((tmp_path / "state" / "staging").iterdir())
    events = rt.catalog.events(kind="chain.failed")
    assert len(events) == 1 and events[0].backup_id == run.id and events[0].target == "gone"
