"""Runbook: the stages of a chain overlap like a shell pipeline; kill one mid-stream and the backup is still one good one.

A real worker with four slots runs a files backup whose compress is slow (zstd at a high
level on one thread), so encrypt follows the compressed file while it grows. Then:

- the producer (compress) is killed with SIGKILL mid-stream: its follower stops without
  sealing, the redelivered compress starts again from the dump, and one verified backup
  remains;
- the follower (encrypt) is killed mid-stream: it is redelivered and reads its input again
  from the first byte;
- a worker with one slot runs the same chain one stage after another, to the same
  plaintext and a restorable backup.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from backup_tasks import client
from backup_tasks.records.catalog import Status
from conftest import run_cli
from test_files_source import assert_same_tree, snapshot

# an attempt's file: the final name, the attempt id (12 hex digits), ".part"
COMPRESSED_PART = r"\.data\.tar\.zst\.[0-9a-f]{12}\.part"
ENCRYPTED_PART = r"\.data\.tar\.zst\.age\.[0-9a-f]{12}\.part"


def _tree(tmp_path: Path) -> Path:
    tree = tmp_path / "data"
    tree.mkdir()
    with open(tree / "big.log", "wb") as fh:  # a quarter random: zstd -12 on one thread takes a few seconds
        for i in range(1600):
            fh.write(os.urandom(1 << 14) + (f"line {i} " * 6000).encode()[: 3 << 14])
    (tree / "small.txt").write_text("a small file\n")
    return tree


def _config(tmp_path: Path, make_config, tree: Path) -> Path:
    return make_config(f'[targets.bulk]\nkind = "files"\nhost = "hostA"\npaths = ["{tree}"]\n',
                       settings="compression_threads = 1\ncompression_level = 12\n")


def _writer_of(worker, pattern: str) -> int | None:
    """The pool process that has a file matching ``pattern`` open for writing (the stage producing it)."""
    for pid in worker.children():
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except FileNotFoundError:
            continue
        for fd in fds:
            try:
                name = os.path.basename(os.readlink(f"/proc/{pid}/fd/{fd}"))
                flags = Path(f"/proc/{pid}/fdinfo/{fd}").read_text().split("flags:")[1].split()[0]
            except (FileNotFoundError, IndexError):
                continue
            if re.fullmatch(pattern, name) and int(flags, 8) & 0o3:
                return pid
    return None


def _parts(staging: Path, pattern: str) -> list[Path]:
    try:
        return [p for p in staging.iterdir() if re.fullmatch(pattern, p.name)]
    except FileNotFoundError:
        return []


def _kill_mid_stream(worker, staging: Path, victim_pattern: str) -> None:
    """Once compress is writing and encrypt follows it, with some bytes through, SIGKILL the writer of ``victim_pattern``."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        compressed, encrypted = _parts(staging, COMPRESSED_PART), _parts(staging, ENCRYPTED_PART)
        if compressed and encrypted and _size(encrypted) > (1 << 20):  # both growing at once: the stages overlap
            pid = _writer_of(worker, victim_pattern)
            if pid is not None:
                os.kill(pid, signal.SIGKILL)
                return
        time.sleep(0.01)
    raise AssertionError(f"never caught compress and encrypt writing at once; log:\n{worker.log.read_text()[-3000:]}")


def _size(paths: list[Path]) -> int:
    try:
        return max(p.stat().st_size for p in paths)
    except FileNotFoundError:
        return 0


def _one_verified_backup(rt, run) -> dict:
    info = run.wait(timeout=300)
    assert info["status"] == Status.VERIFIED, info
    assert [(r.id, r.status) for r in rt.catalog.list(target="bulk")] == [(run.id, Status.VERIFIED)]
    stored = [o.key for o in rt.storage("local").list(f"bulk/{run.id}/")]
    assert stored == [f"bulk/{run.id}/{name}" for name in ("data.tar.zst.age", "listing.jsonl.zst.age", "manifest.json",
                                                          "verified.json")]
    return _manifest(rt, run.id)


def _manifest(rt, backup_id: str) -> dict:
    with rt.storage("local").get(f"bulk/{backup_id}/manifest.json") as fh:
        return json.load(fh)


@pytest.mark.parametrize("victim, pattern", [("compress", COMPRESSED_PART), ("encrypt", ENCRYPTED_PART)],
                         ids=["producer-killed", "follower-killed"])
def test_a_stage_killed_mid_stream_while_its_neighbour_runs_is_redone_and_one_good_backup_remains(
        tmp_path, make_config, runtime_for, redis_url, start_worker, victim, pattern):
    tree = _tree(tmp_path)
    cfg = _config(tmp_path, make_config, tree)
    worker = start_worker(cfg, redis_url, ["host.hostA", "verify"], name="overlap@hostA", concurrency=4)
    rt = runtime_for(cfg, BACKUP_BROKER_URL=redis_url)

    run = client.enqueue_backup("bulk", rt=rt)
    _kill_mid_stream(worker, tmp_path / "state" / "staging" / run.id, pattern)

    doc = _one_verified_backup(rt, run)
    log = worker.log.read_text()
    assert "WorkerLostError" in log or "SIGKILL" in log
    assert log.count(f"backup.{victim}[") >= 2 and "received" in log  # the killed stage was delivered again
    if victim == "compress":  # the encrypt that followed the dead attempt stopped without sealing
        assert f"encrypt of run {run.id}: " in log and "this attempt stops" in log
    assert doc["plaintext"]["size"] > 90 << 20 and doc["stored"]["size"] > 25 << 20 and doc["timings"]["compress"] > 0
    assert not (tmp_path / "state" / "staging" / run.id).exists()


def test_a_one_slot_worker_runs_the_same_chain_one_stage_after_another_to_the_same_result(
        tmp_path, make_config, runtime_for, redis_url, start_worker):
    tree = _tree(tmp_path)
    cfg = _config(tmp_path, make_config, tree)
    rt = runtime_for(cfg, BACKUP_BROKER_URL=redis_url)
    docs = {}
    for slots in (4, 1):
        worker = start_worker(cfg, redis_url, ["host.hostA", "verify"], name=f"slots{slots}@hostA", concurrency=slots)
        run = client.enqueue_backup("bulk", rt=rt)
        info = run.wait(timeout=300)
        assert info["status"] == Status.VERIFIED, (info, worker.log.read_text()[-3000:])
        docs[slots] = _manifest(rt, run.id)
        worker.stop()
    # the same tree gives the same plaintext whether the stages overlapped or not
    assert docs[1]["plaintext"] == docs[4]["plaintext"]
    assert docs[1]["stored"]["sha256"] != docs[4]["stored"]["sha256"]  # two encryptions, two random file keys

    dest = tmp_path / "restored"
    run_cli("restore", docs[1]["backup_id"], "--to", str(dest), "--json", config=cfg, check=0)
    assert_same_tree(snapshot(tree), snapshot(dest / str(tree).lstrip("/")))


def test_the_embedded_default_overlaps_its_stages_in_threads_and_restores_the_same_tree(tmp_path, make_config):
    tree = _tree(tmp_path)
    cfg = _config(tmp_path, make_config, tree)
    staging = tmp_path / "state" / "staging"
    env = {k: v for k, v in os.environ.items() if k != "BACKUP_BROKER_URL"}  # no broker: the embedded default
    proc = subprocess.Popen([sys.executable, "-m", "backup_tasks.cli", "--config", str(cfg), "backup", "bulk", "--wait",
                             "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    seen_together = False
    while proc.poll() is None and not seen_together:
        runs = [d for d in staging.iterdir() if not d.name.startswith(".")] if staging.is_dir() else []
        seen_together = any(_parts(d, COMPRESSED_PART) and _parts(d, ENCRYPTED_PART) for d in runs)
        time.sleep(0.01)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert seen_together  # encrypt wrote while compress was still writing: one process, stages at once
    info = json.loads(out)
    assert info["status"] == Status.VERIFIED

    dest = tmp_path / "restored"
    run_cli("restore", info["id"], "--to", str(dest), "--json", config=cfg, check=0)
    assert_same_tree(snapshot(tree), snapshot(dest / str(tree).lstrip("/")))
