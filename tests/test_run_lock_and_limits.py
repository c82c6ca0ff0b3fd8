"""Runbook: overlapping runs of one target, a stage past its time limit, and which failures are retried.

Real ``celery worker`` processes on a claimed Redis DB, and ``backupctl`` processes for
the embedded default. An overlapping start is skipped with a ``run.skipped`` event and
shows in ``backupctl list`` as failed with the reason; a stage past its soft time limit
fails the run with a message naming the setting to raise; an unreachable database is
retried with exponential backoff and jitter, a missing file is not retried at all.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest
import redis

from backup_tasks import client
from backup_tasks.records.catalog import Status
from conftest import run_cli
from distributed import big_tree, wait_for



def test_an_overlapping_start_is_skipped_with_an_event_and_listed_with_its_reason(tmp_path, make_config, runtime_for,
                                                                                  redis_url, start_worker):
    tree = big_tree(tmp_path, 60)
    cfg = make_config(f'[targets.bulk]\nkind = "files"\nhost = "hostA"\npaths = ["{tree}"]\n')
    start_worker(cfg, redis_url, ["host.hostA", "verify"], name="w1@hostA")
    rt = runtime_for(cfg, BACKUP_BROKER_URL=redis_url)

    # The second start reaches the worker while the first run holds the target (its dump is queued behind it).
    first, second = client.enqueue_backup("bulk", rt=rt), client.enqueue_backup("bulk", rt=rt)
    assert first.wait(timeout=120)["status"] == Status.VERIFIED
    with pytest.raises(client.BackupFailed, match=rf"skipped: target 'bulk' is already running \(run {first.id}\)"):
        second.wait(timeout=60)

    events = rt.catalog.events(kind="run.skipped")
    assert [(e.backup_id, e.target, e.severity, e.detail["running"]) for e in events] == [(second.id, "bulk", "warning", first.id)]
    assert rt.catalog.events(kind="chain.failed") == []  # a skip is not a failed backup to alert on
    listed = {e["id"]: e for e in json.loads(run_cli("list", "--json", config=cfg, env={"BACKUP_BROKER_URL": redis_url},
                                                     check=0).stdout)}
    assert listed[second.id]["status"] == "failed" and listed[second.id]["error"].startswith("skipped: target 'bulk'")
    assert listed[second.id]["locations"] == [] and listed[first.id]["status"] == "verified"
    assert redis.Redis.from_url(redis_url).get("backup_tasks:lock:target:bulk") is None  # released after the upload
    assert client.enqueue_backup("bulk", rt=rt).wait(timeout=120)["status"] == Status.VERIFIED  # so the next run runs


def test_the_embedded_default_skips_an_overlapping_backupctl_too(tmp_path, make_config):
    tree = big_tree(tmp_path, 150)
    cfg = make_config(f'[targets.bulk]\nkind = "files"\npaths = ["{tree}"]\n', settings="compression_threads = 1\n")
    staging = tmp_path / "state" / "staging"
    env = {k: v for k, v in os.environ.items() if k not in ("BACKUP_BROKER_URL", "BACKUP_CONFIG")}
    argv = [sys.executable, "-m", "backup_tasks.cli", "backup", "bulk", "--json", "--config", str(cfg)]
    first = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    wait_for(lambda: (staging / ".lock.bulk").exists() and any(p.is_dir() for p in staging.iterdir()), 60,
             "the first backupctl to hold the lock")
    assert oct((staging / ".lock.bulk").stat().st_mode & 0o777) == "0o600"
    second = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)
    out, _ = first.communicate(timeout=120)

    assert first.returncode == 0, out
    done = json.loads(out)
    assert second.returncode == 1, second.stdout + second.stderr
    skipped = json.loads(second.stdout)
    assert skipped["status"] == "failed"
    assert skipped["error"] == f"skipped: target 'bulk' is already running (run {done['id']})"
    assert done["status"] == "verified"
    # lock file and run directory gone; .listings is the host's cache of tree listings for the next incremental
    assert [p.name for p in staging.iterdir()] == [".listings"]


def test_a_stage_past_its_soft_time_limit_fails_the_run_and_says_which_limit(tmp_path, make_config, runtime_for, redis_url,
                                                                            start_worker):
    tree = big_tree(tmp_path, 24, random=True)
    cfg = make_config(f'[targets.slow]\nkind = "files"\nhost = "hostA"\npaths = ["{tree}"]\n',
                      settings="compression_level = 19\ncompression_threads = 1\n"
                               "stage_soft_time_limits = { compress = 1 }\nstage_hard_time_limits = { compress = 10 }\n")
    worker = start_worker(cfg, redis_url, ["host.hostA", "verify"], name="w1@hostA")
    rt = runtime_for(cfg, BACKUP_BROKER_URL=redis_url)

    started = time.monotonic()
    run = client.enqueue_backup("slow", rt=rt)
    with pytest.raises(client.BackupFailed) as failed:
        run.wait(timeout=60)
    assert time.monotonic() - started < 10  # the soft limit stopped it, long before zstd -19 would have finished
    assert f"compress failed: compress of run {run.id} exceeded its soft time limit of 1s" in str(failed.value)
    assert "stage_soft_time_limits.compress" in run.info()["error"]
    assert [e.backup_id for e in rt.catalog.events(kind="chain.failed")] == [run.id]
    assert not (tmp_path / "state" / "staging" / run.id).exists()
    assert "Soft time limit (1s) exceeded for backup.compress" in worker.log.read_text()
    assert "Retry in" not in worker.log.read_text()


def test_only_transient_errors_are_retried_with_backoff_and_jitter(tmp_path, make_config, runtime_for, redis_url, start_worker):
    cfg = make_config('[targets.pg-down]\nkind = "postgres"\nhost = "hostA"\ndsn = "postgresql://backup@127.0.0.1:1/app"\n'
                      'password = "env:PG_DOWN_PASSWORD"\n'
                      f'[targets.gone]\nkind = "sqlite"\nhost = "hostA"\npath = "{tmp_path / "nope.db"}"\n',
                      settings="task_max_retries = 3\ntask_retry_backoff_max = 3\n")
    os.environ["PG_DOWN_PASSWORD"] = "pw-for-a-server-that-is-down"
    try:
        worker = start_worker(cfg, redis_url, ["host.hostA", "verify"], name="w1@hostA")
        rt = runtime_for(cfg, BACKUP_BROKER_URL=redis_url)
        down, gone = client.enqueue_backup("pg-down", rt=rt), client.enqueue_backup("gone", rt=rt)
        with pytest.raises(client.BackupFailed, match="PostgreSQL on 127.0.0.1:1 is unreachable"):
            down.wait(timeout=60)
        with pytest.raises(client.BackupFailed, match="does not exist"):
            gone.wait(timeout=60)
    finally:
        del os.environ["PG_DOWN_PASSWORD"]
    log = worker.log.read_text()
    delays = [float(d) for d in re.findall(r"backup\.dump\[[^\]]+\] retry: Retry in ([\d.]+)s: ServiceUnavailable", log)]
    # three retries, the n-th after a random 0..min(2**n, cap) seconds: exponential backoff with full jitter
    assert len(delays) == 3, log[-3000:]
    assert all(0 <= d <= min(2 ** n, 3) for n, d in enumerate(delays)), delays
    assert log.count("retry: Retry in") == 3  # the missing SQLite file (a PermanentError) was not retried
    assert "pw-for-a-server-that-is-down" not in log
    # What the worker did is what every stage task is configured to do.
    from backup_tasks.errors import TransientError
    from backup_tasks.orchestration.tasks import compress, dump, upload

    for task in (dump, compress, upload):
        assert (task.autoretry_for, task.retry_backoff, task.retry_jitter) == ((TransientError,), True, True)
        assert (task.max_retries, task.retry_backoff_max) == (3, 3)  # from [settings], via the app's config


def test_the_lock_outlives_a_wait_in_the_queue_between_stages_and_goes_with_the_run(redis_url):
    """A stage refreshes the lock for run_lock_ttl; handed over, it holds while the next message waits."""
    from backup_tasks.orchestration.run_lock import RedisRunLock

    lock = RedisRunLock(redis_url, "queued-behind", ttl=1, handoff_ttl=30)
    assert lock.acquire("run-1") is None
    with lock.kept_alive("run-1"):  # a stage that ends: the next one waits in the host's queue
        pass
    time.sleep(1.5)  # longer than run_lock_ttl: before, the lock had lapsed here
    assert lock.acquire("run-2") == "run-1"  # an overlapping start is still skipped
    assert 25_000 < redis.Redis.from_url(redis_url).pttl(lock.key) <= 30_000
    lock.release("run-1")
    assert lock.acquire("run-2") is None
    lock.release("run-2")
