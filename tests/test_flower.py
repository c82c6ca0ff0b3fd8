"""Runbook: Flower with basic auth watches a backup: readable tasks, target names as args, PROGRESS states.

Flower is started by the test the way README (Running distributed) says, the password
coming from FLOWER_BASIC_AUTH (never on a command line, where ps shows it). Without
credentials the API answers 401; with them it lists the chain's tasks, and a running
stage shows the state PROGRESS with its byte counts. Applications that do not speak
Python enqueue a backup through Flower's HTTP API. A headless Chromium screenshot of the
dashboard is saved under test-artifacts/.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from backup_tasks import client
from backup_tasks.records.catalog import Status
from distributed import Process, free_port, wait_for
from test_sqlite_backup import make_app_db

USER, PASSWORD = "ops", "flower-test-pw-7Qx"
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
STAGES = ("backup.dump", "backup.compress", "backup.encrypt", "backup.upload", "backup.verify")


def _get(url: str, auth: bool = True, data: bytes | None = None):
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"} if data else {})
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read()
            return response.status, json.loads(body) if response.headers.get_content_type() == "application/json" else body
    except urllib.error.HTTPError as exc:
        return exc.code, None
    except urllib.error.URLError:  # not listening yet
        return None, None


def test_flower_with_auth_shows_the_chain_and_its_progress(tmp_path, make_config, runtime_for, redis_url, start_worker):
    tree = tmp_path / "data"
    tree.mkdir()
    with open(tree / "big.bin", "wb") as fh:
        for i in range(96):  # half random, half constant: compresses about 2x, takes a second or two per stage
            fh.write(os.urandom(1 << 19) + bytes([i % 251]) * (1 << 19))
    db = tmp_path / "app.db"
    make_app_db(db, rows=300)
    cfg = make_config(f'[targets.bulk]\nkind = "files"\nhost = "hostA"\npaths = ["{tree}"]\n'
                      f'[targets.app-sqlite]\nkind = "sqlite"\nhost = "hostA"\npath = "{db}"\n',
                      settings="compression_threads = 1\n",
                      tiers=f'[tiers.local]\nkind = "local"\npath = "{tmp_path / "state" / "store"}"\nbandwidth_limit = "32MiB"\n')
    start_worker(cfg, redis_url, ["host.hostA", "verify"], name="w1@hostA")
    port = free_port()
    flower = Process([sys.executable, "-m", "celery", "-A", "backup_tasks.celery_app", "flower", f"--port={port}",
                      "--address=127.0.0.1"], tmp_path / "flower.log",
                     env={**os.environ, "BACKUP_CONFIG": str(cfg), "BACKUP_BROKER_URL": redis_url,
                          "FLOWER_BASIC_AUTH": f"{USER}:{PASSWORD}"})
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: _get(f"{base}/healthcheck", auth=False)[0] == 200, 30, "Flower to answer")
        assert _get(f"{base}/api/tasks", auth=False)[0] == 401
        assert _get(f"{base}/api/workers", auth=False)[0] == 401
        assert _get(f"{base}/api/tasks")[0] == 200
        wait_for(lambda: "w1@hostA" in (_get(f"{base}/api/workers?refresh=1")[1] or {}), 30, "Flower to see the worker")
        # The task list shows each stage's target (args), run id (kwargs) and progress (result) without a click.
        page = _get(f"{base}/tasks")[1].decode()
        columns = re.findall(r'<th data-column="(\w+)">', page)
        assert {"name", "args", "kwargs", "state", "result"} <= set(columns), columns

        rt = runtime_for(cfg, BACKUP_BROKER_URL=redis_url)
        run = client.enqueue_backup("bulk", rt=rt)
        live: list[dict] = []  # what Flower's API showed of tasks in state PROGRESS
        run_states, run_progress = set(), []
        while run.status() not in (Status.VERIFIED, Status.FAILED):
            _, tasks = _get(f"{base}/api/tasks")
            live += [t for t in (tasks or {}).values() if t["state"] == "PROGRESS"]
            _, result = _get(f"{base}/api/task/result/{run.id}")  # the run id: the state of its running stage
            run_states.add((result or {}).get("state"))
            run_progress.append(run.progress())
            time.sleep(0.2)
        assert run.info()["status"] == Status.VERIFIED

        def finished():  # the catalog may say verified a moment before Flower hears verify's success event
            tasks = _get(f"{base}/api/tasks")[1] or {}
            ours = [t for t in tasks.values() if t["name"] in STAGES]
            return tasks if len(ours) == len(STAGES) and all(t["state"] == "SUCCESS" for t in ours) else None

        tasks = wait_for(finished, 15, "Flower to see every stage succeed")
        ours = [t for t in tasks.values() if t["name"] in STAGES]
        assert {t["name"] for t in ours} == set(STAGES)
        # backup.start replaced itself with the chain, whose last task (verify) carries the run id on
        assert tasks[run.id]["name"] == "backup.verify"
        for task in ours:  # the target name is the only argument shown; the run id travels beside it
            assert task["args"] == "('bulk',)" and task["kwargs"] == repr({"run": run.id}), task
        # Running stages were in state PROGRESS, with a readable line where Flower shows a result.
        seen = {t["name"] for t in live}  # a stage quicker than the 0.2 s poll may slip through; the throttled upload cannot
        assert "backup.upload" in seen and len(seen) >= 2, seen
        assert all(re.fullmatch(r"(dump|compress|encrypt|upload|verify) [\d.]+ (B|KiB|MiB)( of [\d.]+ (B|KiB|MiB) \(\d+%\))?",
                                t["result"]) for t in live), [t["result"] for t in live]
        assert "PROGRESS" in run_states
        reports = [p for p in run_progress if p]
        assert reports and all(set(p) == {"backup_id", "target", "stage", "bytes_done", "bytes_total"} for p in reports)
        assert all(p["backup_id"] == run.id and p["target"] == "bulk" for p in reports), reports
        uploads = [p for p in reports if p["stage"] == "upload"]  # the slowest stage here (the tier's bandwidth limit)
        assert uploads and all(0 <= p["bytes_done"] <= p["bytes_total"] and p["bytes_total"] > 40 << 20 for p in uploads), reports
        assert PASSWORD not in flower.text()

        # A non-Python application enqueues through Flower's HTTP API: the run id is the task id.
        status, sent = _get(f"{base}/api/task/async-apply/backup.start",
                            data=json.dumps({"args": ["app-sqlite"], "kwargs": {"actor": "app:billing"}}).encode())
        assert status == 200, sent
        applied = client.Run(sent["task-id"], rt).wait(timeout=60)
        assert applied["status"] == Status.VERIFIED and applied["target"] == "app-sqlite"
        assert rt.catalog.get(sent["task-id"]).actor == "app:billing"

        _screenshot(f"http://{USER}:{PASSWORD}@127.0.0.1:{port}/", ARTIFACTS / "flower-dashboard.png")
        _screenshot(f"http://{USER}:{PASSWORD}@127.0.0.1:{port}/tasks", ARTIFACTS / "flower-tasks.png")
    finally:
        flower.stop()


def _screenshot(url: str, out: Path) -> None:
    out.parent.mkdir(exist_ok=True)
    out.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                        "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
                        f"--screenshot={out}", "--window-size=1280,800", "--virtual-time-budget=3000", url],
                       capture_output=True, timeout=90, check=True)
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, len(data)
