"""Runbook: the worker process dies (SIGKILL) mid-compress; the stage is redelivered and the backup is good."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from backup_tasks import client
from backup_tasks.catalog import Status


def test_sigkill_during_compress_is_redelivered_and_yields_one_good_backup(tmp_path, make_config, runtime_for, redis_url,
                                                                          start_worker):
    tree = tmp_path / "data"
    tree.mkdir()
    # ~300 MiB of mildly compressible data: compress runs for seconds, long enough to be caught.
    block = os.urandom(1 << 20)
    with open(tree / "big.bin", "wb") as fh:
        for i in range(300):
            fh.write(block[: (1 << 19)] + bytes([i % 251]) * (1 << 19))
    state = tmp_path / "state"
    cfg = make_config(f'[targets.bulk]\nkind = "files"\nhost = "hostA"\npaths = ["{tree}"]\n',
                      settings="compression_threads = 1\n")
    worker = start_worker(cfg, redis_url, ["host.hostA", "verify"], name="crash@hostA")
    rt = runtime_for(cfg, BACKUP_BROKER_URL=redis_url)

    run = client.enqueue_backup("bulk", rt=rt)
    staging = state / "staging" / run.id
    deadline = time.monotonic() + 120
    victim = None
    while time.monotonic() < deadline and victim is None:
        if any(p.name.startswith(".") and p.name.endswith(".zst.tmp") for p in _ls(staging)):
            victim = worker.children()[0]
            os.kill(victim, signal.SIGKILL)
        time.sleep(0.02)
    assert victim is not None, f"compress never started; log:\n{worker.log.read_text()[-3000:]}"

    info = run.wait(timeout=300)
    assert info["status"] == Status.VERIFIED
    log = worker.log.read_text()
    assert "WorkerLostError" in log or "SIGKILL" in log  # the kill really happened mid-task
    assert log.count("backup.compress[") >= 2  # ... and the stage ran again
    rows = rt.catalog.list(target="bulk")
    assert [(r.id, r.status) for r in rows] == [(run.id, Status.VERIFIED)]
    stored = [o.key for o in rt.storage("local").list("bulk/")]
    assert stored == [f"bulk/{run.id}/data.tar.zst.age", f"bulk/{run.id}/manifest.json", f"bulk/{run.id}/verified.json"]
    assert list((state / "staging").iterdir()) == []


def _ls(path: Path) -> list[Path]:
    try:
        return list(path.iterdir())
    except FileNotFoundError:
        return []
