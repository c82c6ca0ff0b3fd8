"""Runbook: a run's messages arrive twice; there is still exactly one good backup.

Redis delivers at least once. Twice the same start at the same moment (a worker died
after sending the chain, before its ack) must not race on the run's staging files, and a
start that turns up again after the run was verified must not dump again and overwrite
the stored backup under the same id.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

from backup_tasks import client
from backup_tasks.records.catalog import Status
from backup_tasks.orchestration.tasks import start


def _bulk_target(tmp_path: Path, megabytes: int) -> str:
    tree = tmp_path / "data"
    tree.mkdir()
    block = os.urandom(1 << 19)
    with open(tree / "big.bin", "wb") as fh:  # half random, half runs: compress takes a moment
        for i in range(megabytes):
            fh.write(block + bytes([i % 251]) * (1 << 19))
    return f'[targets.bulk]\nkind = "files"\nhost = "hostA"\npaths = ["{tree}"]\n'


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_the_same_start_delivered_twice_at_once_gives_one_good_backup(tmp_path, make_config, runtime_for, redis_url,
                                                                     start_worker):
    cfg = make_config(_bulk_target(tmp_path, 120), settings="compression_threads = 1\n")
    worker = start_worker(cfg, redis_url, ["host.hostA", "verify"], name="twice@hostA", concurrency=2)
    rt = runtime_for(cfg, BACKUP_BROKER_URL=redis_url)

    run = client.enqueue_backup("bulk", rt=rt)
    start.apply_async(args=("bulk", "full"), kwargs={"actor": "cli:test"}, task_id=run.id)  # the copy
    info = run.wait(timeout=300)

    assert info["status"] == Status.VERIFIED, info
    log = worker.log.read_text()
    assert log.count(f"backup.start[{run.id}]") >= 2  # both copies were taken, by two processes
    assert [(r.id, r.status) for r in rt.catalog.list(target="bulk")] == [(run.id, Status.VERIFIED)]
    assert rt.catalog.events(kind="chain.failed") == []
    # The copy either stopped where it fell behind, or kept in step and only verified the same backup again.
    assert rt.catalog.verifications(run.id) and all(v.ok for v in rt.catalog.verifications(run.id))
    stored = sorted(o.key for o in rt.storage("local").list("bulk/"))
    assert stored == [f"bulk/{run.id}/data.tar.zst.age", f"bulk/{run.id}/listing.jsonl.zst.age", f"bulk/{run.id}/manifest.json",
                      f"bulk/{run.id}/verified.json"]
    _wait_for(lambda: not (tmp_path / "state" / "staging" / run.id).exists(), 30, "the run's staging dir to go")


def test_a_start_redelivered_after_the_run_was_verified_changes_nothing(tmp_path, make_config, runtime_for, redis_url,
                                                                       start_worker):
    cfg = make_config(_bulk_target(tmp_path, 8))
    worker = start_worker(cfg, redis_url, ["host.hostA", "verify"], name="late@hostA")
    rt = runtime_for(cfg, BACKUP_BROKER_URL=redis_url)
    run = client.enqueue_backup("bulk", rt=rt)
    assert run.wait(timeout=120)["status"] == Status.VERIFIED
    store = tmp_path / "state" / "store" / "bulk" / run.id
    # The catalog says verified a moment before the verify writes its marker beside the manifest.
    _wait_for(lambda: (store / "verified.json").exists(), 30, "the verified.json marker")
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in store.iterdir()}
    audit_before = len(rt.catalog.audit())

    start.apply_async(args=("bulk", "full"), kwargs={"actor": "cli:test"}, task_id=run.id)
    _wait_for(lambda: "this delivery is a duplicate; ignored" in worker.log.read_text(), 60, "the late start to be dropped")

    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in store.iterdir()} == before  # not dumped again
    assert len(re.findall(r"Task backup.dump\[\S+\] received", worker.log.read_text())) == 1
    row = rt.catalog.get(run.id)
    assert row.status == Status.VERIFIED and len(rt.catalog.verifications(run.id)) == 1
    assert rt.catalog.events(kind="run.skipped") == [] and rt.catalog.events(kind="chain.failed") == []
    assert len(rt.catalog.audit()) == audit_before
    assert not (tmp_path / "state" / "staging" / run.id).exists()


def test_an_upload_redelivered_after_its_commit_goes_on_but_a_late_copy_of_an_earlier_stage_stops(
        tmp_path, make_config, runtime_for):
    """The worker died after the catalog said 'uploaded' and before the ack: the upload comes again.

    It must hand the committed manifest on to verify (else the run waits for verify forever),
    while a copy of the dump arriving now must not dump again over a run that moved on.
    """
    from celery import states

    from backup_tasks.ops import backup
    from backup_tasks.orchestration import tasks

    rt = runtime_for(make_config(_bulk_target(tmp_path, 2)))
    ref = backup.start(rt, "bulk-redelivered-upload", "bulk", "full")
    encrypted = backup.encrypt(rt, backup.compress(rt, backup.dump(rt, ref)))
    uploaded = backup.upload(rt, encrypted)
    assert rt.catalog.get(ref["backup_id"]).status == Status.UPLOADED

    again = tasks.upload.apply(args=(encrypted,))  # the redelivered upload, run as the worker would
    assert again.state == states.SUCCESS and again.result["sha256"] == uploaded["sha256"]
    late_dump = tasks.dump.apply(args=(ref,))
    assert late_dump.state == states.IGNORED
    assert not (tmp_path / "state" / "staging" / ref["backup_id"]).exists()
    stored = sorted(o.key for o in rt.storage("local").list("bulk/"))
    assert stored == [f"bulk/{ref['backup_id']}/data.tar.zst.age", f"bulk/{ref['backup_id']}/listing.jsonl.zst.age",
                      f"bulk/{ref['backup_id']}/manifest.json"]


def test_a_late_copy_of_the_dump_leaves_the_running_chain_and_its_staging_alone(tmp_path, make_config, runtime_for):
    from celery import states

    from backup_tasks.ops import backup
    from backup_tasks.orchestration import tasks

    rt = runtime_for(make_config(_bulk_target(tmp_path, 2)))
    ref = backup.start(rt, "bulk-late-dump", "bulk", "full")
    dumped = backup.dump(rt, ref)
    rt.catalog.set_stage(ref["backup_id"], "compress")  # the original has moved on: its compress began

    assert tasks.dump.apply(args=(ref,)).state == states.IGNORED  # the copy stops ...
    assert Path(dumped["path"]).exists()  # ... and the original's staged dump is still there

    uploaded = backup.upload(rt, backup.encrypt(rt, backup.compress(rt, dumped)))
    assert rt.catalog.get(ref["backup_id"]).status == Status.UPLOADED and uploaded["size"] > 0
