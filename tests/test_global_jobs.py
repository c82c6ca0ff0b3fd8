"""Runbook: beat's global jobs do their work on real workers: verify what was left, re-read the oldest, call drills.

The jobs are sent the way beat sends them (their beat entry: task, queue, kwargs) to a
real worker. ``backup.verify_pending`` verifies a backup whose chain never got its
verify; ``backup.reverify`` re-reads the backups verified longest ago; ``backup.drill_due``
puts one ``backup.drill`` per target with a ``drill`` table on the ``drill`` queue, physical
PostgreSQL targets included.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import redis
from sqlalchemy import update

import beat_schedule
from backup_tasks import client
from backup_tasks.records.catalog import BackupRow, Status
from backup_tasks.orchestration.celery_app import app
from distributed import wait_for
from test_sqlite_backup import make_app_db


def _send(entries: dict, name: str):
    entry = entries[name]
    return app.send_task(entry["task"], args=entry.get("args", ()), kwargs=entry["kwargs"], **entry["options"])


def test_the_global_jobs_verify_reread_and_call_drills(tmp_path, make_config, runtime_for, redis_url, start_worker):
    db = tmp_path / "app.db"
    make_app_db(db, rows=300)
    cfg = make_config(f'[targets.app-sqlite]\nkind = "sqlite"\nhost = "hostA"\npath = "{db}"\n'
                      '[targets.school-db]\nkind = "postgres"\nhost = "db01"\ndsn = "postgresql://backup@127.0.0.1:5432/school"\n'
                      'drill = { server = "postgresql://postgres@127.0.0.1:5432/postgres" }\n'
                      '[targets.shop-db]\nkind = "postgres"\nhost = "db01"\ndsn = "postgresql://backup@127.0.0.1:5432/shop"\n'
                      # a physical target's drill restores into a temporary data directory: its table names no server
                      '[targets.orders-cluster]\nkind = "postgres"\nmode = "physical"\nhost = "db01"\n'
                      'dsn = "postgresql://replicator@127.0.0.1:5432/postgres"\ndrill = { checks = ["select true"] }\n',
                      settings="reverify_days = 3\n")
    rt = runtime_for(cfg, BACKUP_BROKER_URL=redis_url)
    entries = beat_schedule.build(rt.config)
    broker = redis.Redis.from_url(redis_url)

    # A chain whose verify never ran: this host's worker takes no "verify", and the message is lost.
    worker = start_worker(cfg, redis_url, ["host.hostA", "maintenance"], name="w1@hostA")
    runs = []
    for _ in range(2):  # one after the other: an overlapping start would be skipped
        runs.append(client.enqueue_backup("app-sqlite", rt=rt))
        wait_for(lambda: runs[-1].status() == Status.UPLOADED, 60, "the run stored")
    wait_for(lambda: broker.llen("verify") == 2, 10, "their verifies queued")
    broker.delete("verify")
    an_hour_ago = datetime.now(timezone.utc) - timedelta(hours=2)
    _set(rt, runs[0].id, finished_at=an_hour_ago)  # the other is younger than the grace period: its verify may be on its way
    worker.stop()

    worker = start_worker(cfg, redis_url, ["host.hostA", "verify", "maintenance"], name="w2@hostA")
    assert _send(entries, "verify-pending").get(timeout=30) == {"enqueued": [runs[0].id]}
    assert runs[0].wait(timeout=30)["status"] == Status.VERIFIED
    assert runs[1].status() == Status.UPLOADED

    # Rolling re-verification: with 3 verified backups and reverify_days = 3, each daily run re-reads
    # ceil(3 / 2) = 2, the longest-unverified first.
    more = []
    for _ in range(2):
        more.append(client.enqueue_backup("app-sqlite", rt=rt))
        more[-1].wait(timeout=60)
    now = datetime.now(timezone.utc)
    ages = {runs[0].id: now - timedelta(days=2, hours=1), more[0].id: now - timedelta(days=1), more[1].id: now - timedelta(hours=1)}
    for backup_id, at in ages.items():
        _set(rt, backup_id, verified_at=at)
    result = _send(entries, "reverify").get(timeout=30)
    assert result == {"enqueued": [runs[0].id, more[0].id], "stored": 3, "reverify_days": 3}
    wait_for(lambda: all(rt.catalog.get(b).verified_at > now for b in result["enqueued"]), 30, "the re-reads")
    assert rt.catalog.get(more[1].id).verified_at == ages[more[1].id]
    assert [v.ok for v in rt.catalog.verifications(runs[0].id)] == [True, True]

    # Weekly drills: one backup.drill per target with a drill table, on the drill queue (no drill host runs here).
    assert _send(entries, "drills").get(timeout=30) == {"enqueued": ["orders-cluster", "school-db"]}
    queued = [json.loads(m) for m in broker.lrange("drill", 0, -1)]
    assert sorted((m["headers"]["task"], m["headers"]["argsrepr"]) for m in queued) == [
        ("backup.drill", "('orders-cluster',)"), ("backup.drill", "('school-db',)")]
    assert "backup.verify_pending" in worker.log.read_text() and "backup.drill_due" in worker.log.read_text()


def _set(rt, backup_id: str, **values) -> None:
    """Age a catalog entry (test set-up: time passing)."""
    with rt.catalog._session.begin() as s:
        s.execute(update(BackupRow).where(BackupRow.id == backup_id).values(**values))
