"""Runbook: two hosts, each with its own worker, and one beat publishing their targets' schedules.

Two real ``celery worker`` processes (w1@hostA on host.hostA, w2@hostB on host.hostB)
and a real ``celery beat`` with redbeat, on a fast ``@every`` schedule. Each target's
chain runs on its own host only; the scheduled runs land in the catalog verified. Then
the targets file changes under the running beat and workers: the new target is
scheduled and backed up, the removed one leaves the schedule, nobody is restarted.
"""

from __future__ import annotations

import json
import time

import redis

from backup_tasks.records.catalog import Status
from conftest import write_config
from distributed import start_beat, wait_for  # noqa: F401,F811 - pytest fixtures
from test_sqlite_backup import make_app_db

FAST_BEAT = "beat_lock_timeout = 4\nbeat_max_loop_interval = 1\n"
PREFIX = "backup_tasks:beat:"


def _targets(tmp_path, names: dict[str, str]) -> str:
    out = ""
    for name, host in names.items():
        db = tmp_path / f"{name}.db"
        if not db.exists():
            make_app_db(db, rows=200)
        out += f'[targets.{name}]\nkind = "sqlite"\nhost = "{host}"\npath = "{db}"\nschedule = "@every 3s"\n'
    return out


def _beat_runs(rt, target: str) -> list:
    return [r for r in rt.catalog.list(target=target) if r.actor == "beat"]


def test_scheduled_runs_stay_on_their_hosts_and_a_changed_targets_file_reaches_beat_and_workers(
        tmp_path, session_keys, runtime_for, redis_url, start_worker, start_beat):
    cfg = write_config(tmp_path / "targets.toml", session_keys, settings=FAST_BEAT,
                       targets=_targets(tmp_path, {"a-db": "hostA", "b-db": "hostB"}))
    start_worker(cfg, redis_url, ["host.hostA", "verify"], name="w1@hostA")
    start_worker(cfg, redis_url, ["host.hostB", "verify"], name="w2@hostB")
    beat = start_beat(cfg, redis_url)
    rt = runtime_for(cfg, BACKUP_BROKER_URL=redis_url)

    wait_for(lambda: all(any(r.status == Status.VERIFIED for r in _beat_runs(rt, t)) for t in ("a-db", "b-db")),
             45, f"a verified scheduled run of both targets; beat log:\n{beat.text()[-2000:]}")

    # Every stage of every chain ran on the worker of its target's host (the result backend keeps the worker name).
    r = redis.Redis.from_url(redis_url)
    expected = {"a-db": "w1@hostA", "b-db": "w2@hostB"}
    stages = [json.loads(r.get(k)) for k in r.scan_iter("celery-task-meta-*")]
    stages = [m for m in stages if m.get("name") in ("backup.dump", "backup.compress", "backup.encrypt", "backup.upload")]
    assert {m["args"][0]["target"] for m in stages} == {"a-db", "b-db"}
    for meta in stages:
        assert meta["worker"] == expected[meta["args"][0]["target"]], meta
        assert meta["queue"] == {"a-db": "host.hostA", "b-db": "host.hostB"}[meta["args"][0]["target"]]
    assert all(row.host == {"a-db": "hostA", "b-db": "hostB"}[row.target] for row in rt.catalog.list())

    # The operator adds a target on hostA and removes b-db, editing the file in place, and changes the
    # timezone too: that one beat cannot apply while running (redbeat reads crons in its start-up zone), and says so.
    write_config(tmp_path / "targets.toml", session_keys, settings=FAST_BEAT + 'timezone = "Europe/Berlin"\n',
                 targets=_targets(tmp_path, {"a-db": "hostA", "a-new": "hostA"}))
    beat.wait_log(r"schedule synced from .*added: backup:a-new; removed: backup:b-db", timeout=15)
    removed_by = time.monotonic()
    assert "timezone changed from UTC to Europe/Berlin; the schedule stays in UTC until beat is restarted" in beat.text()
    statics = {k.decode() for k in r.smembers(f"{PREFIX}:statics")}
    assert "backup:a-new" in statics and "backup:b-db" not in statics
    assert not r.exists(f"{PREFIX}backup:b-db")
    b_runs = len(rt.catalog.list(target="b-db"))

    # w1 was never restarted, yet it runs the new target (it re-reads the file itself).
    wait_for(lambda: any(r.status == Status.VERIFIED for r in _beat_runs(rt, "a-new")), 30,
             "a verified scheduled run of the new target")
    # longer than the @every interval since b-db left the schedule: it would have been published again
    time.sleep(max(0.0, 3.5 - (time.monotonic() - removed_by)))
    assert len(rt.catalog.list(target="b-db")) == b_runs
    assert not [row for row in rt.catalog.list(status=Status.FAILED) if not (row.error or "").startswith("skipped:")]
