"""Runbook: a whole worker is killed mid-dump and its message is lost; the run is failed, freed and reported.

``kill -9`` of the worker's process group (main process and pool child) mid-dump, then
the broker forgets the stage's message (a Redis without persistence restarting would):
nothing will ever come back for this run. Once its stage has been silent for
``run_heartbeat_timeout``:

1. ``backupctl watchdog`` fails the run with the reason (which worker, which stage, the
   last heartbeat), frees the target's lock, removes its staging and alerts. A new
   backup of the target then runs and is verified.
2. Without any watchdog: the target's next start finds the lock held by the dead run,
   fails that run the same way and goes ahead.

And between stages: a run whose dump is done waits for its compress in the host's queue.
Past the timeout it is left alone while that message is queued, and failed and freed once
the broker has lost it.
"""

from __future__ import annotations

import json
import os
import signal
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import redis

from backup_tasks import client
from backup_tasks.policy.abandoned import abandoned, waiting
from backup_tasks.records import events
from backup_tasks.records.catalog import Status
from conftest import run_cli
from notify_servers import webhook_server  # noqa: F401 - pytest fixture
from distributed import big_tree, wait_for

TIMEOUT = 2  # run_heartbeat_timeout: seconds of silence after which a working stage's worker is gone


def kill_worker_mid_dump(worker, run, staging: Path) -> None:
    """SIGKILL the whole worker once the dump is writing its output."""
    def dumping():
        run_dir = staging / run.id
        return run_dir.is_dir() and any(p.name.startswith(".data.") and p.name.endswith(".part") for p in run_dir.iterdir())

    wait_for(dumping, 60, f"the dump of {run.id} to be writing", interval=0.005)
    os.killpg(worker.proc.pid, signal.SIGKILL)
    worker.proc.wait()


def lose_the_message(broker: str, run) -> None:
    """What a Redis without persistence does to a delivered, unacknowledged stage when it restarts."""
    db = redis.Redis.from_url(broker)
    # the dump, held for the dead worker until the visibility timeout (6 h); with it maybe the compress
    # that the dump sent to follow its output, which the worker had already taken from the queue
    held = [json.loads(entry)[0]["headers"]["task"] for entry in db.hvals("unacked")]
    assert "backup.dump" in held and set(held) <= {"backup.dump", "backup.compress"}, held
    db.delete("unacked", "unacked_index")


def wait_until_silent(rt, run_id: str) -> None:
    def silent():
        beats = [b for b in rt.catalog.heartbeats() if b.run_id == run_id]
        return beats and beats[0].working and (datetime.now(timezone.utc) - beats[0].beat_at).total_seconds() > TIMEOUT + 0.5

    wait_for(silent, 30, f"the heartbeat of {run_id} to fall silent")


def test_a_run_whose_worker_died_is_failed_freed_and_reported(tmp_path, make_config, runtime_for, redis_url, start_worker,
                                                              webhook_server):
    tree = big_tree(tmp_path, 160)
    state = tmp_path / "state"
    staging = state / "staging"
    cfg = make_config(f'[targets.bulk]\nkind = "files"\nhost = "hostA"\npaths = ["{tree}"]\n',
                      settings=f'run_heartbeat_timeout = {TIMEOUT}\nalerts = ["{webhook_server.url()}"]\n')
    rt = runtime_for(cfg, BACKUP_BROKER_URL=redis_url)
    lock_key = "backup_tasks:lock:target:bulk"
    db = redis.Redis.from_url(redis_url)

    # 1. The watchdog finds the dead run.
    worker = start_worker(cfg, redis_url, ["host.hostA", "verify"], name="w1@hostA")
    dead = client.enqueue_backup("bulk", rt=rt)
    kill_worker_mid_dump(worker, dead, staging)
    killed_at = time.monotonic()
    lose_the_message(redis_url, dead)
    assert rt.catalog.get(dead.id).status == Status.RUNNING and db.get(lock_key) == dead.id.encode()
    wait_until_silent(rt, dead.id)

    report = json.loads(run_cli("watchdog", "--json", config=cfg, env={"BACKUP_BROKER_URL": redis_url}, check=0).stdout)
    reclaimed_after = time.monotonic() - killed_at
    [reaped] = report["abandoned"]
    assert reaped["backup_id"] == dead.id and reaped["stage"] == "dump" and reaped["staging_removed"] == str(staging / dead.id)
    row = rt.catalog.get(dead.id)
    assert row.status == Status.FAILED
    assert row.error.startswith(f"abandoned: its worker {reaped['worker']} (pid {reaped['pid']}) stopped during dump")
    assert not (staging / dead.id).exists()
    assert db.get(lock_key) is None
    [event] = rt.catalog.events(kind=events.RUN_ABANDONED)
    assert event.backup_id == dead.id and event.target == "bulk"
    [alert] = webhook_server.json_of("was abandoned")
    assert alert["type"] == "failure" and dead.id in alert["message"]
    # The watchdog reports a run once: the next check finds nothing new.
    assert json.loads(run_cli("watchdog", "--json", config=cfg, env={"BACKUP_BROKER_URL": redis_url},
                              check=0).stdout)["abandoned"] == []

    worker = start_worker(cfg, redis_url, ["host.hostA", "verify"], name="w2@hostA")
    assert client.enqueue_backup("bulk", rt=rt).wait(timeout=120)["status"] == Status.VERIFIED

    # 2. No watchdog: the next start reclaims the target from the dead run itself.
    second = client.enqueue_backup("bulk", rt=rt)
    kill_worker_mid_dump(worker, second, staging)
    lose_the_message(redis_url, second)
    wait_until_silent(rt, second.id)
    start_worker(cfg, redis_url, ["host.hostA", "verify"], name="w3@hostA")
    after = client.enqueue_backup("bulk", rt=rt).wait(timeout=120)
    assert after["status"] == Status.VERIFIED, after
    assert rt.catalog.get(second.id).status == Status.FAILED
    assert rt.catalog.get(second.id).error.startswith("abandoned: its worker")
    assert [e.backup_id for e in rt.catalog.events(kind=events.RUN_ABANDONED)] == [dead.id, second.id]
    assert not rt.catalog.list(status=Status.RUNNING)
    assert [p for p in staging.iterdir() if not p.name.startswith(".")] == []  # no run's staging (.listings is a cache)
    assert db.get(lock_key) is None
    print(f"killed mid-dump -> run failed, lock and staging freed by the watchdog after {reclaimed_after:.1f}s "
          f"(run_heartbeat_timeout {TIMEOUT}s)")


def test_a_run_whose_next_stage_message_is_lost_is_failed_and_freed_but_not_while_it_is_queued(
        tmp_path, make_config, runtime_for, redis_url, start_worker):
    tree = tmp_path / "data"
    tree.mkdir()
    with open(tree / "big.bin", "wb") as fh:
        for i in range(64):
            fh.write(os.urandom(1 << 16) + bytes([i % 251]) * ((1 << 20) - (1 << 16)))
    staging = tmp_path / "state" / "staging"
    cfg = make_config(f'[targets.bulk]\nkind = "files"\nhost = "hostA"\npaths = ["{tree}"]\n',
                      settings=f"run_heartbeat_timeout = {TIMEOUT}\n")
    rt = runtime_for(cfg, BACKUP_BROKER_URL=redis_url)
    db = redis.Redis.from_url(redis_url)
    lock_key = "backup_tasks:lock:target:bulk"

    # The worker's main process stops mid-dump (it fetches and acknowledges messages; the dump runs in its
    # pool child), so when the dump ends its compress stays in the queue. Then the whole worker goes.
    worker = start_worker(cfg, redis_url, ["host.hostA", "verify"], name="w1@hostA")
    run = client.enqueue_backup("bulk", rt=rt)
    wait_for(lambda: any(b.run_id == run.id and b.stage == "dump" and b.working for b in rt.catalog.heartbeats()),
             60, f"the dump of {run.id} to start", interval=0.005)
    os.kill(worker.proc.pid, signal.SIGSTOP)
    wait_for(lambda: any(b.run_id == run.id and b.stage == "dump" and not b.working for b in rt.catalog.heartbeats()),
             60, f"the dump of {run.id} to end")
    [queued] = wait_for(lambda: db.lrange("host.hostA", 0, -1), 30, "the compress message in the host's queue")
    assert json.loads(queued)["headers"]["task"] == "backup.compress"
    os.killpg(worker.proc.pid, signal.SIGKILL)
    worker.proc.wait()
    wait_for(lambda: any(b.run_id == run.id and (datetime.now(timezone.utc) - b.beat_at).total_seconds() > TIMEOUT + 0.5
                         for b in rt.catalog.heartbeats()), 30, "the run's last beat to be older than run_heartbeat_timeout")

    # Its message is still queued: a long wait on a busy host, not a lost run.
    report = json.loads(run_cli("watchdog", "--json", config=cfg, env={"BACKUP_BROKER_URL": redis_url}, check=0).stdout)
    assert report["abandoned"] == []
    assert rt.catalog.get(run.id).status == Status.RUNNING and db.get(lock_key) == run.id.encode()

    # The broker loses every message (as a Redis without persistence does when it restarts).
    db.delete("host.hostA", "unacked", "unacked_index")
    report = json.loads(run_cli("watchdog", "--json", config=cfg, env={"BACKUP_BROKER_URL": redis_url}, check=0).stdout)
    [reaped] = report["abandoned"]
    assert reaped["backup_id"] == run.id and reaped["stage"] == "dump"
    assert reaped["staging_removed"] == str(staging / run.id) and not (staging / run.id).exists()
    row = rt.catalog.get(run.id)
    assert row.status == Status.FAILED
    assert row.error.startswith("abandoned: the message of its next stage is lost: it has waited since dump ended")
    assert db.get(lock_key) is None
    [event] = rt.catalog.events(kind=events.RUN_ABANDONED)
    assert event.backup_id == run.id and "appendonly" in event.detail["remedy"]

    # The target is free: the next backup runs to the end.
    start_worker(cfg, redis_url, ["host.hostA", "verify"], name="w2@hostA")
    assert client.enqueue_backup("bulk", rt=rt).wait(timeout=120)["status"] == Status.VERIFIED


def test_only_a_working_stage_silent_past_the_timeout_counts_as_abandoned():
    now = datetime(2026, 12, 5, 2, 0, tzinfo=timezone.utc)
    beats = [("dumping", True, now - timedelta(seconds=30)),          # beating: alive
             ("dead", True, now - timedelta(seconds=301)),            # silent mid-stage: its worker is gone
             ("queued", False, now - timedelta(hours=5)),             # between stages, waiting in a queue: not judged
             ("at-the-line", True, now - timedelta(seconds=300))]     # exactly the timeout: not yet
    assert abandoned(beats, now, timeout=timedelta(seconds=300)) == ["dead"]
    # Waiting past the timeout makes a suspect only: the broker says whether its message is gone.
    assert waiting(beats + [("just-queued", False, now - timedelta(seconds=10))], now,
                   timeout=timedelta(seconds=300)) == ["queued"]
