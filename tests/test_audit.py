"""Runbook: after a night of operations, the audit log says who did what and how it ended."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from backup_tasks import client
from backup_tasks.records import keys
from backup_tasks.cli.audit import parse_since
from backup_tasks.errors import InputError
from backup_tasks.orchestration.tasks import cleanup as cleanup_task
from conftest import run_cli
from test_sqlite_backup import make_app_db


def test_every_operation_is_audited_with_actor_and_outcome(tmp_path, make_config, runtime_for):
    db = tmp_path / "app.db"
    make_app_db(db)
    cfg = make_config(f'[targets.app-sqlite]\nkind = "sqlite"\npath = "{db}"\nretention = {{ keep_last = 1 }}\n')
    env = {"BACKUP_ACTOR": "cli:alice"}

    first = json.loads(run_cli("backup", "app-sqlite", "--json", config=cfg, env=env, check=0).stdout)["id"]
    # an application enqueues the second backup through the client API
    rt = runtime_for(cfg)
    second = client.enqueue_backup("app-sqlite", actor="app:billing", rt=rt).wait()["id"]
    run_cli("verify", first, "--json", config=cfg, env=env, check=0)

    dest = tmp_path / "live.db"
    dest.write_text("the operator's data")
    refusal = json.loads(run_cli("restore", first, "--to", str(dest), "--json", config=cfg, env=env, check=2).stdout)
    assert dest.read_text() == "the operator's data"
    run_cli("restore", first, "--to", str(dest), "--dry-run", "--json", config=cfg, env=env, check=0)
    run_cli("restore", second, "--to", str(tmp_path / "fresh.db"), "--json", config=cfg, env=env, check=0)
    run_cli("cleanup", "--target", "app-sqlite", "--json", config=cfg, env=env, check=0)  # keep_last=1 removes `first`
    cleanup_task.apply(kwargs={"target": "app-sqlite"})  # what beat sends at 03:00: nothing left to remove

    log = json.loads(run_cli("audit", "--since", "1h", "--json", config=cfg, check=0).stdout)
    seen = [(e["action"], e["actor"], e["outcome"], e["backup_id"]) for e in reversed(log)]
    expected = [
        ("backup", "cli:alice", "started", first),
        ("backup", "cli:alice", "verified", first),
        ("backup", "app:billing", "started", second),
        ("backup", "app:billing", "verified", second),
        ("verify", "cli:alice", "ok", first),
        ("restore", "cli:alice", "refused", first),
        ("restore", "cli:alice", "dry-run", first),
        ("restore", "cli:alice", "ok", second),
        ("delete", "cli:alice", "ok", first),
        ("cleanup", "cli:alice", "ok", None),
        ("cleanup", "beat", "ok", None),
    ]
    assert seen == expected
    refused = next(e for e in log if e["outcome"] == "refused")
    assert refused["detail"]["error"] == refusal["error"]["message"] and refused["detail"]["to"] == str(dest)
    delete = next(e for e in log if e["action"] == "delete")
    assert delete["detail"]["by"] == "retention" and delete["detail"]["reasons"]
    assert next(e for e in log if e["action"] == "cleanup" and e["actor"] == "beat")["detail"]["removed"] == 0

    # filters: by action, by target; a time after everything shows nothing
    only_restores = json.loads(run_cli("audit", "--action", "restore", "--json", config=cfg, check=0).stdout)
    assert [e["outcome"] for e in only_restores] == ["ok", "dry-run", "refused"]
    later = (datetime.now(timezone.utc) + timedelta(minutes=5)).isoformat()
    assert json.loads(run_cli("audit", "--since", later, "--json", config=cfg, check=0).stdout) == []
    human = run_cli("audit", "--target", "app-sqlite", config=cfg, check=0).stdout
    assert "cli:alice" in human and "app:billing" in human and "refused" in human


def test_a_failed_backup_key_generation_and_api_tokens_are_audited(tmp_path, make_config):
    db = tmp_path / "gone.db"
    cfg = make_config(f'[targets.gone]\nkind = "sqlite"\npath = "{db}"\n')
    run_cli("backup", "gone", "--json", config=cfg, env={"BACKUP_ACTOR": "cli:bob"}, check=1)
    run_cli("keys", "generate", "--out", str(tmp_path / "newkeys"), "--json", config=cfg, env={"BACKUP_ACTOR": "cli:bob"}, check=0)
    made = json.loads(run_cli("api", "token", "--name", "ci", "--role", "viewer", "--json", config=cfg,
                              env={"BACKUP_ACTOR": "cli:bob"}, check=0).stdout)
    log = json.loads(run_cli("audit", "--json", config=cfg, check=0).stdout)
    backup_outcomes = [(e["outcome"], e["actor"]) for e in reversed(log) if e["action"] == "backup"]
    assert backup_outcomes == [("started", "cli:bob"), ("failed", "cli:bob")]
    failed = next(e for e in log if e["action"] == "backup" and e["outcome"] == "failed")
    assert "gone.db" in failed["detail"]["reason"]
    keys_entry = next(e for e in log if e["action"] == "keys.generate")
    assert keys_entry["actor"] == "cli:bob" and len(keys_entry["detail"]["recipient_key_id"]) == 16
    identity = (tmp_path / "newkeys" / keys.IDENTITY_FILE).read_text()
    secret = next(l for l in identity.splitlines() if l.startswith("AGE-SECRET-KEY"))
    assert secret not in json.dumps(log)
    token_entry = next(e for e in log if e["action"] == "api.token")
    assert token_entry["actor"] == "cli:bob" and token_entry["detail"]["role"] == "viewer"
    assert token_entry["detail"]["hash"] in made["config_line"] and made["token"] not in json.dumps(log)


def test_since_accepts_durations_and_iso_times_and_names_bad_input():
    now = datetime(2026, 11, 22, 12, 0, tzinfo=timezone.utc)
    assert parse_since("24h", now) == now - timedelta(hours=24)
    assert parse_since("2w", now) == now - timedelta(weeks=2)
    assert parse_since("2026-11-01T00:00:00Z", now) == datetime(2026, 11, 1, tzinfo=timezone.utc)
    assert parse_since("2026-11-01", now) == datetime(2026, 11, 1, tzinfo=timezone.utc)
    with pytest.raises(InputError, match="neither a duration nor an ISO time"):
        parse_since("yesterday", now)
