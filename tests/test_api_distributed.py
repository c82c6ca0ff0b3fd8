"""Runbook: an application backs up over HTTP; a real worker does it through Redis; the catalog shows it.

The API server, the worker and the test are three processes sharing only the config
file, Redis (a claimed DB) and the catalog: POST /backups returns 202 at once with the
run still queued, GET /runs/{id} follows it through its stages, GET /backups lists it
verified. A verify requested over HTTP is a 202 job on the ``verify`` queue, followed
the same way.
"""

from __future__ import annotations

import json
import time

import redis

from api_server import ApiServer, api_table, make_tokens
from test_sqlite_backup import make_app_db


def follow(client, status_url: str, done: set[str], timeout: float = 120) -> tuple[dict, list[str]]:
    """Poll a status URL until its status is one of ``done``; returns the last state and the stages seen."""
    deadline, stages = time.monotonic() + timeout, []
    while time.monotonic() < deadline:
        response = client.get(status_url.removeprefix("/api/v1"))
        assert response.status_code == 200, response.text
        state = response.json()
        if state.get("stage") and (not stages or stages[-1] != state["stage"]):
            stages.append(state["stage"])
        if state["status"] in done:
            return state, stages
        time.sleep(0.1)
    raise AssertionError(f"{status_url} still {state} after {timeout}s")


def test_a_backup_enqueued_over_http_runs_on_a_worker_through_redis(tmp_path, make_config, redis_url, start_worker):
    make_app_db(tmp_path / "app.db")
    tokens = make_tokens(["viewer", "operator"])
    cfg = make_config(f'[targets.app-sqlite]\nkind = "sqlite"\nhost = "hostA"\npath = "{tmp_path / "app.db"}"\n'
                      + api_table(tokens))
    worker = start_worker(cfg, redis_url, ["host.hostA", "verify"], name="w1@hostA")
    server = ApiServer(cfg, tokens, tmp_path / "api.log", env={"BACKUP_BROKER_URL": redis_url})
    try:
        operator, viewer = server.client("operator"), server.client("viewer")
        health = viewer.get("/health")
        assert health.status_code == 200, health.text
        assert {c["name"]: c["status"] for c in health.json()["components"]}["broker"] == "ok"

        accepted = operator.post("/backups", json={"target": "app-sqlite"})
        assert accepted.status_code == 202, accepted.text
        run_id = accepted.json()["id"]
        assert accepted.json()["status"] == "running" and accepted.json()["stage"] == "queued"  # returned before the work

        state, stages = follow(viewer, accepted.json()["status_url"], {"verified", "failed"})
        assert state["status"] == "verified", state
        assert stages[-1] == "done" and len(stages) >= 2, stages  # seen while it moved, not only at the end

        listed = viewer.get("/backups", params={"target": "app-sqlite"}).json()["items"]
        assert [(b["id"], b["status"]) for b in listed] == [(run_id, "verified")]
        r = redis.Redis.from_url(redis_url)
        metas = [json.loads(r.get(k)) for k in r.scan_iter("celery-task-meta-*")]
        assert {m["queue"] for m in metas if m.get("name") == "backup.dump"} == {"host.hostA"}  # the worker's queue did it

        job = operator.post(f"/backups/{run_id}/verify")
        assert job.status_code == 202, job.text
        assert job.json()["status_url"] == f"/api/v1/runs/{job.json()['job_id']}"
        verdict, _ = follow(viewer, job.json()["status_url"], {"verified", "failed", "error"})
        assert (verdict["kind"], verdict["status"], verdict["backup_id"]) == ("verify", "verified", run_id), verdict
        assert len(viewer.get(f"/backups/{run_id}").json()["verifications"]) == 2
        assert "backup.verify" in worker.log.read_text()
        assert viewer.get(f"/runs/{run_id}.verify-00000000").status_code == 404  # a job nobody was given
    finally:
        server.stop()
