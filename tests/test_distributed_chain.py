"""Runbook: the chain through real Redis and a real worker process, and no secret anywhere it travels."""

from __future__ import annotations

import json
import sqlite3

import redis

from backup_tasks import client
from backup_tasks.records.catalog import Status
from backup_tasks.records.keys import IDENTITY_FILE, SIGNING_KEY_FILE
from conftest import run_cli
from test_sqlite_backup import make_app_db

DB_PASSWORD = "pw-Zq81-never-anywhere"


def test_chain_runs_on_the_host_worker_through_redis_and_leaks_no_secret(tmp_path, make_config, runtime_for, redis_url,
                                                                        start_worker, session_keys, monkeypatch):
    db = tmp_path / "app.db"
    make_app_db(db)
    tree = tmp_path / "uploads"
    (tree / "2026").mkdir(parents=True)
    (tree / "2026" / "invoice.pdf").write_bytes(b"%PDF-1.4 " + bytes(range(256)) * 100)
    monkeypatch.setenv("APP_DB_PASSWORD", DB_PASSWORD)
    cfg = make_config(
        f'[targets.app-sqlite]\nkind = "sqlite"\nhost = "hostA"\npath = "{db}"\npassword = "env:APP_DB_PASSWORD"\n'
        f'[targets.uploads]\nkind = "files"\nhost = "hostA"\npaths = ["{tree}"]\n'
    )
    worker = start_worker(cfg, redis_url, ["host.hostA", "verify"], name="w1@hostA",
                          extra_env={"APP_DB_PASSWORD": DB_PASSWORD})
    rt = runtime_for(cfg, BACKUP_BROKER_URL=redis_url)
    assert not rt.settings.embedded

    runs = [client.enqueue_backup("app-sqlite", rt=rt), client.enqueue_backup("uploads", rt=rt)]
    seen_stages: list[str] = []
    results = [run.wait(timeout=120, on_progress=lambda i: seen_stages.append(i["stage"])) for run in runs]
    assert [r["status"] for r in results] == [Status.VERIFIED, Status.VERIFIED]
    assert {"done"} <= set(seen_stages)

    # It really went through Redis to that worker: every stage left a result there.
    r = redis.Redis.from_url(redis_url)
    metas = [json.loads(r.get(k)) for k in r.scan_iter("celery-task-meta-*")]
    names = {m.get("name") for m in metas}
    assert {"backup.dump", "backup.compress", "backup.encrypt", "backup.upload", "backup.verify"} <= names
    assert all(m["status"] == "SUCCESS" for m in metas)
    assert {m.get("queue") for m in metas if m.get("name") == "backup.dump"} == {"host.hostA"}
    log = worker.log.read_text()
    assert "backup.compress" in log and "succeeded" in log

    # An operator enqueues without waiting: the run is listed at once, then a worker finishes it.
    queued = json.loads(run_cli("backup", "uploads", "--json", config=cfg, env={"BACKUP_BROKER_URL": redis_url}, check=0).stdout)
    assert queued["status"] == "running" and queued["target"] == "uploads"
    runs.append(client.get_run(queued["id"], rt=rt))
    assert runs[-1].wait(timeout=120)["status"] == Status.VERIFIED

    # The list the operator sees, and a restore from it.
    listed = json.loads(run_cli("list", "--json", config=cfg, env={"BACKUP_BROKER_URL": redis_url}, check=0).stdout)
    assert {e["id"] for e in listed} == {run.id for run in runs}
    for entry in listed:
        assert set(entry) >= {"id", "target", "kind", "status", "created_at", "size_stored", "locations", "verified_at"}
    restored = tmp_path / "restored.db"
    run_cli("restore", runs[0].id, "--to", str(restored), config=cfg, check=0)
    assert sqlite3.connect(restored).execute("SELECT count(*) FROM orders").fetchone()[0] == 2000

    # No secret in task arguments or results (result_extended stores args), the worker log or the catalog.
    secrets = [DB_PASSWORD, *_key_material(session_keys)]
    stored = b"".join(r.dump(k) or b"" for k in r.scan_iter("*"))  # every key, whatever its type
    catalog_dump = "\n".join(sqlite3.connect(rt.settings.catalog_url.removeprefix("sqlite:///")).iterdump())
    for secret in secrets:
        assert secret.encode() not in stored
        assert secret not in log
        assert secret not in catalog_dump


def _key_material(keys_dir) -> list[str]:
    identity = next(line for line in (keys_dir / IDENTITY_FILE).read_text().splitlines() if line.startswith("AGE-SECRET-KEY-"))
    pem_body = "".join(line for line in (keys_dir / SIGNING_KEY_FILE).read_text().splitlines() if not line.startswith("-----"))
    return [identity, identity.lower(), pem_body]


def test_broker_down_is_exit_code_3(tmp_path, make_config):
    cfg = make_config('[targets.t]\nkind = "files"\npaths = ["/etc/hostname"]\n')
    done = run_cli("backup", "t", "--json", config=cfg, env={"BACKUP_BROKER_URL": "redis://127.0.0.1:1/0"})
    assert done.returncode == 3, done.stdout + done.stderr
    assert json.loads(done.stdout)["error"]["type"] == "ServiceUnavailable"


def test_scheduled_cleanup_runs_on_a_maintenance_worker(tmp_path, make_config, runtime_for, redis_url, start_worker):
    db = tmp_path / "app.db"
    make_app_db(db)
    cfg = make_config(f'[targets.app-sqlite]\nkind = "sqlite"\nhost = "hostA"\npath = "{db}"\n')
    start_worker(cfg, redis_url, ["maintenance"], name="m1@hostA")
    rt = runtime_for(cfg, BACKUP_BROKER_URL=redis_url)
    import beat_schedule
    from backup_tasks.orchestration.tasks import cleanup

    entry = beat_schedule.build(rt.config)["cleanup"]
    result = cleanup.apply_async(kwargs={"dry_run": True}, **entry["options"])
    report = result.get(timeout=60)
    assert report["dry_run"] is True and report["errors"] == []
    assert json.loads(redis.Redis.from_url(redis_url).get(f"celery-task-meta-{result.id}"))["queue"] == "maintenance"
