"""Runbook: the worker process dies (SIGKILL) mid-stage; the stage is redelivered and the backup is good.

Once in the middle of compress (caught by its temp file appearing) and once in the
middle of the upload (caught by the run's PROGRESS: upload under way, bytes moving;
the tier's bandwidth limit keeps that upload running for a few seconds).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import redis

from backup_tasks import client
from backup_tasks.records.catalog import Status
from distributed import big_tree


def _compressing(run, staging: Path) -> bool:
    return any(p.name.startswith(".") and ".zst." in p.name and p.name.endswith(".part") for p in _ls(staging))


def _uploading(run, staging: Path) -> bool:
    report = run.progress()
    if not (report and report["stage"] == "upload" and report["bytes_done"] > 0):
        return False
    # while upload follows the growing stored object its total is not known yet (None)
    return report["bytes_total"] is None or report["bytes_done"] < report["bytes_total"]


@pytest.mark.parametrize("stage, caught, megabytes, bandwidth", [("compress", _compressing, 300, None),
                                                                 ("upload", _uploading, 120, "8MiB")])
def test_sigkill_mid_stage_is_redelivered_and_yields_one_good_backup(tmp_path, make_config, runtime_for, redis_url,
                                                                    start_worker, stage, caught, megabytes, bandwidth):
    tree = big_tree(tmp_path, megabytes)  # mildly compressible: compress runs for seconds, long enough to be caught
    state = tmp_path / "state"
    cfg = make_config(f'[targets.bulk]\nkind = "files"\nhost = "hostA"\npaths = ["{tree}"]\n',
                      settings="compression_threads = 1\n",
                      tiers=f'[tiers.local]\nkind = "local"\npath = "{state / "store"}"\n'
                            + (f'bandwidth_limit = "{bandwidth}"\n' if bandwidth else ""))
    worker = start_worker(cfg, redis_url, ["host.hostA", "verify"], name="crash@hostA")
    rt = runtime_for(cfg, BACKUP_BROKER_URL=redis_url)

    run = client.enqueue_backup("bulk", rt=rt)
    staging = state / "staging" / run.id
    deadline = time.monotonic() + 120
    victim = None
    while time.monotonic() < deadline and victim is None:
        if caught(run, staging):
            victim = worker.children()[0]
            os.kill(victim, signal.SIGKILL)
        time.sleep(0.02)
    assert victim is not None, f"{stage} was never caught running; log:\n{worker.log.read_text()[-3000:]}"

    info = run.wait(timeout=300)
    assert info["status"] == Status.VERIFIED
    log = worker.log.read_text()
    assert "WorkerLostError" in log or "SIGKILL" in log  # the kill really happened mid-task
    assert log.count(f"backup.{stage}[") >= 2  # ... and the stage ran again
    rows = rt.catalog.list(target="bulk")
    assert [(r.id, r.status) for r in rows] == [(run.id, Status.VERIFIED)]
    stored = [o.key for o in rt.storage("local").list("bulk/")]
    assert stored == [f"bulk/{run.id}/data.tar.zst.age", f"bulk/{run.id}/listing.jsonl.zst.age", f"bulk/{run.id}/manifest.json",
                      f"bulk/{run.id}/verified.json"]
    # nothing of the run is left; .listings is the host's cache of tree listings for the next incremental
    assert [p.name for p in (state / "staging").iterdir()] == [".listings"]
    # The run's lock went with the committed upload: the next run of the target will not be skipped.
    assert redis.Redis.from_url(redis_url).get("backup_tasks:lock:target:bulk") is None


def _ls(path: Path) -> list[Path]:
    try:
        return list(path.iterdir())
    except FileNotFoundError:
        return []
