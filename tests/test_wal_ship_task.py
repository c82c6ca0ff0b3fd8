"""Runbook: the every-minute shipping job of a physical target, sent as beat sends it, runs on a real worker.

``wal push`` only needs this host's disk: it is run here without any PostgreSQL. The
beat entry ``wal-ship:<target>`` goes to the target's host queue, where a real
``celery worker`` ships the spool through compress → encrypt → upload into the catalog.
"""

from __future__ import annotations

import json
import os
import stat

import beat_schedule
from backup_tasks.orchestration.celery_app import app
from conftest import run_cli


def test_the_beat_entry_ships_the_spool_on_the_targets_host_queue(tmp_path, make_config, runtime_for, redis_url, start_worker):
    cfg = make_config('[targets.orders]\nkind = "postgres"\nmode = "physical"\nhost = "db01"\n'
                      'dsn = "postgresql://replicator@127.0.0.1:5432/postgres"\n',
                      settings=f'spool_dir = "{tmp_path / "spool"}"\n')
    segment = tmp_path / "000000010000000000000007"
    segment.write_bytes(os.urandom(1 << 20))
    pushed = json.loads(run_cli("wal", "push", "--target", "orders", str(segment), "--json", config=cfg, check=0).stdout)
    assert pushed["outcome"] == "spooled"
    spool = tmp_path / "spool" / "orders"
    assert stat.S_IMODE(spool.stat().st_mode) == 0o700 and stat.S_IMODE((spool / segment.name).stat().st_mode) == 0o600

    rt = runtime_for(cfg, BACKUP_BROKER_URL=redis_url)
    entry = beat_schedule.build(rt.config)["wal-ship:orders"]
    start_worker(cfg, redis_url, ["host.db01"], name="w1@db01")
    result = app.send_task(entry["task"], args=entry["args"], kwargs=entry["kwargs"], **entry["options"]).get(timeout=60)
    assert result["shipped"] == [segment.name] and result["spool_bytes"] == 0
    assert not (spool / segment.name).exists()
    [row] = rt.catalog.logs("orders", "wal")
    assert (row.name, row.kind, row.timeline, row.seq) == (segment.name, "segment", 1, 7)
    assert row.key.startswith("_logs/orders/wal/") and row.key.endswith(".zst.age") and row.key_ids

    # the exporter shows how old the newest stored WAL is (what an alert rule on WAL lag reads)
    metrics = run_cli("metrics", "show", config=cfg, check=0).stdout
    [lag] = [line for line in metrics.splitlines() if line.startswith('backup_wal_lag_seconds{target="orders"}')]
    assert 0 <= float(lag.split()[-1]) < 600

    back = tmp_path / "back"
    run_cli("wal", "get", "--target", "orders", segment.name, str(back), config=cfg, check=0)
    assert back.read_bytes() == segment.read_bytes()
    missing = run_cli("wal", "get", "--target", "orders", "000000010000000000000008", str(tmp_path / "none"), config=cfg)
    assert missing.returncode == 1 and not (tmp_path / "none").exists()  # "no such file": recovery ends here

    # a stored segment that is damaged is a hard error (126), so PostgreSQL stops instead of ending recovery early
    stored = tmp_path / "state" / "store" / row.key
    stored.write_bytes(stored.read_bytes()[:-100])
    damaged = run_cli("wal", "get", "--target", "orders", segment.name, str(tmp_path / "bad"), "--json", config=cfg)
    assert damaged.returncode == 126 and not (tmp_path / "bad").exists()
