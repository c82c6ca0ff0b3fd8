"""Runbook: the operator's commands on the embedded default, and losing the catalog."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys

import pytest

from backup_tasks import client
from backup_tasks.ops.rebuild import rebuild_catalog
from backup_tasks.ops.verify import verify_backup
from backup_tasks.records import keys, manifest
from backup_tasks.records.catalog import Status
from conftest import run_cli, write_config
from test_sqlite_backup import make_app_db


def test_keys_generate_writes_private_files_and_never_overwrites(tmp_path):
    out = tmp_path / "keys"
    data = json.loads(run_cli("keys", "generate", "--out", str(out), "--json", check=0).stdout)
    assert data["recipient"].startswith("age1") and len(data["recipient_key_id"]) == 16
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    for name in (keys.IDENTITY_FILE, keys.RECIPIENT_FILE, keys.SIGNING_KEY_FILE, keys.SIGNING_PUB_FILE):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o600, name
    identity_before = (out / keys.IDENTITY_FILE).read_bytes()
    again = run_cli("keys", "generate", "--out", str(out), "--json", check=2)
    assert "refusing to overwrite" in json.loads(again.stdout)["error"]["message"]
    assert (out / keys.IDENTITY_FILE).read_bytes() == identity_before
    # the private key appears in no output
    secret = next(l for l in identity_before.decode().splitlines() if l.startswith("AGE-SECRET-KEY"))
    assert secret not in again.stdout + again.stderr and secret not in json.dumps(data)


def test_backup_wait_prints_id_sizes_duration_and_verification(tmp_path, make_config):
    db = tmp_path / "app.db"
    make_app_db(db)
    cfg = make_config(f'[targets.app-sqlite]\nkind = "sqlite"\npath = "{db}"\n')
    done = run_cli("backup", "app-sqlite", "--wait", "--json", config=cfg, check=0)
    out = json.loads(done.stdout)
    assert out["status"] == "verified" and out["target"] == "app-sqlite"
    assert out["size_plain"] > out["size_stored"] > 0
    assert out["duration_seconds"] > 0 and out["verification"]["ok"] is True
    human = run_cli("backup", "app-sqlite", config=cfg, check=0).stdout
    assert "verified" in human and "verification: passed" in human

    shown = json.loads(run_cli("show", out["id"], "--json", config=cfg, check=0).stdout)
    m = shown["manifest"]
    assert m["backup_id"] == out["id"] and m["source"]["tables"]["orders"] == 2000
    assert set(m["timings"]) == {"dump", "compress", "encrypt", "upload"}
    assert m["tool_versions"]["backup-tasks"] and m["encryption"]["recipients"]
    assert shown["verifications"][-1]["ok"] is True

    again = json.loads(run_cli("verify", out["id"], "--json", config=cfg, check=0).stdout)
    assert again["ok"] is True and again["tables_checked"] == 2


@pytest.mark.parametrize("compression", ["gzip", "none"])
def test_other_compressions_and_no_encryption_round_trip(tmp_path, compression, runtime_for):
    db = tmp_path / "app.db"
    make_app_db(db)
    # no keys at all for encryption: a sqlite target may be stored in plaintext, signed all the same
    signing = tmp_path / "k"
    keys.generate(signing)
    cfg = write_config(tmp_path / "t.toml", None, targets=f'[targets.db]\nkind = "sqlite"\npath = "{db}"\n',
                       settings=f'compression = "{compression}"\nsigning_key_file = "{signing / keys.SIGNING_KEY_FILE}"\n')
    rt = runtime_for(cfg)
    info = client.enqueue_backup("db", rt=rt).wait()
    assert info["status"] == Status.VERIFIED
    m = rt.catalog.get(info["id"]).manifest
    assert m["encryption"] is None and m["compression"]["method"] == compression
    expected_name = {"gzip": "data.sqlite.gz", "none": "data.sqlite"}[compression]
    assert info["locations"][0]["key"].endswith(expected_name)
    run_cli("restore", info["id"], "--to", str(tmp_path / "r.db"), config=cfg, check=0)
    assert (tmp_path / "r.db").read_bytes()[:16] == b"SQLite format 3\x00"


def test_config_target_is_encrypted_and_restores(tmp_path, make_config, runtime_for):
    app = tmp_path / "srv" / "app"
    (app / "config").mkdir(parents=True)
    (app / ".env").write_text("DB_PASSWORD=example\n")
    (app / ".env").chmod(0o600)
    (app / "config" / "app.yaml").write_text("debug: false\n")
    cfg = make_config(f'[targets.app-config]\nkind = "config"\npaths = ["{app / ".env"}", "{app / "config"}"]\n')
    rt = runtime_for(cfg)
    info = client.enqueue_backup("app-config", rt=rt).wait()
    assert info["locations"][0]["key"].endswith(".tar.zst.age")
    stored = rt.storage("local").inner.root / info["locations"][0]["key"]
    assert b"DB_PASSWORD" not in stored.read_bytes()
    dest = tmp_path / "r"
    run_cli("restore", info["id"], "--to", str(dest), config=cfg, check=0)
    assert (dest / str(app).lstrip("/") / ".env").read_text() == "DB_PASSWORD=example\n"


def test_client_api_enqueue_status_wait_and_recent_runs(tmp_path, make_config, runtime_for):
    db = tmp_path / "app.db"
    make_app_db(db)
    rt = runtime_for(make_config(f'[targets.app-sqlite]\nkind = "sqlite"\npath = "{db}"\n'))
    run = client.enqueue_backup("app-sqlite", rt=rt)
    assert run.status() == Status.VERIFIED  # embedded: the chain ran inside enqueue
    stages = []
    assert run.wait(timeout=5, on_progress=stages.append)["id"] == run.id
    assert client.recent_runs("app-sqlite", rt=rt)[0]["id"] == run.id
    assert client.get_run(run.id, rt=rt).status() == Status.VERIFIED
    from backup_tasks.errors import InputError

    with pytest.raises(InputError, match="incremental backups are not available for target .app-sqlite. .kind sqlite.: they are for files and config"):
        client.enqueue_backup("app-sqlite", "incremental", rt=rt)
    with pytest.raises(InputError, match="unknown target"):
        client.enqueue_backup("nope", rt=rt)


def test_catalog_rebuild_from_storage_alone_matches_the_list_before(tmp_path, make_config, runtime_for):
    db = tmp_path / "app.db"
    make_app_db(db)
    tree = tmp_path / "t"
    tree.mkdir()
    (tree / "f").write_text("x")
    cfg = make_config(f'[targets.app-sqlite]\nkind = "sqlite"\npath = "{db}"\n[targets.t]\nkind = "files"\npaths = ["{tree}"]\n')
    rt = runtime_for(cfg)
    for target in ("app-sqlite", "t", "app-sqlite"):
        client.enqueue_backup(target, rt=rt).wait()
    # one that was stored but never verified, and one half-written artifact with no manifest (debris)
    store = rt.storage("local").inner.root
    (store / "t" / "t-19990101T000000Z-abcdef").mkdir(parents=True)
    (store / "t" / "t-19990101T000000Z-abcdef" / "data.tar.zst.age").write_bytes(b"partial")
    before = json.loads(run_cli("list", "--json", config=cfg, check=0).stdout)

    catalog_file = tmp_path / "state" / "catalog.db"
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(f"{catalog_file}{suffix}"):
            os.remove(f"{catalog_file}{suffix}")
    assert json.loads(run_cli("list", "--json", config=cfg, check=0).stdout) == []
    rebuilt = json.loads(run_cli("catalog", "rebuild", "--json", config=cfg, check=0).stdout)
    assert rebuilt["backups"] == 3 and rebuilt["verified"] == 3
    after = json.loads(run_cli("list", "--json", config=cfg, check=0).stdout)
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("error",)} for r in rows]  # noqa: E731
    assert strip(after) == strip(before)


def test_rebuild_skips_a_manifest_with_a_bad_signature(tmp_path, make_config, runtime_for):
    tree = tmp_path / "t"
    tree.mkdir()
    (tree / "f").write_text("x")
    cfg = make_config(f'[targets.t]\nkind = "files"\npaths = ["{tree}"]\n')
    rt = runtime_for(cfg)
    info = client.enqueue_backup("t", rt=rt).wait()
    mpath = rt.storage("local").inner.root / info["locations"][0]["key"].rsplit("/", 1)[0] / "manifest.json"
    doc = json.loads(mpath.read_text())
    doc["host"] = "evil"
    mpath.write_text(json.dumps(doc))
    rebuilt = json.loads(run_cli("catalog", "rebuild", "--json", config=cfg, check=0).stdout)
    assert rebuilt["backups"] == 0 and "signature" in rebuilt["skipped"][0]["reason"]


def test_a_restore_host_with_public_keys_only_verifies_and_restores(tmp_path, make_config, runtime_for, session_keys):
    db = tmp_path / "app.db"
    make_app_db(db)
    cfg = make_config(f'[targets.app-sqlite]\nkind = "sqlite"\npath = "{db}"\n')
    backup_id = client.enqueue_backup("app-sqlite", rt=runtime_for(cfg)).wait()["id"]
    # the restore host: same catalog and storage, the identity, and only the *public* signing key
    restore_host = write_config(
        tmp_path / "restore-host.toml", None, targets=f'[targets.app-sqlite]\nkind = "sqlite"\npath = "{db}"\n',
        settings=(f'identities_file = "{session_keys / keys.IDENTITY_FILE}"\n'
                  f'signing_public_key_file = "{session_keys / keys.SIGNING_PUB_FILE}"\n'),
        state=tmp_path / "state")
    verified = json.loads(run_cli("verify", backup_id, "--json", config=restore_host, check=0).stdout)
    assert verified["ok"] is True and any("verified.json not written" in n for n in verified["notes"])
    run_cli("restore", backup_id, "--to", str(tmp_path / "r.db"), config=restore_host, check=0)
    assert sqlite3.connect(tmp_path / "r.db").execute("SELECT count(*) FROM orders").fetchone()[0] == 2000
    # ... but it cannot make backups: it holds no signing key
    done = run_cli("backup", "app-sqlite", "--json", config=restore_host, check=1)
    assert "no signing key configured" in json.loads(done.stdout)["error"]


def test_a_backup_whose_verify_cannot_decrypt_stays_uploaded_and_wait_says_why(tmp_path, make_config, runtime_for):
    db = tmp_path / "app.db"
    make_app_db(db)
    other = tmp_path / "other-keys"
    keys.generate(other)  # this host holds an identity, but not the one the backup is encrypted to
    cfg = make_config(f'[targets.app-sqlite]\nkind = "sqlite"\npath = "{db}"\n')
    wrong_identity = {"BACKUP_IDENTITIES_FILE": str(other / keys.IDENTITY_FILE)}
    rt = runtime_for(cfg, **wrong_identity)
    run = client.enqueue_backup("app-sqlite", rt=rt)
    with pytest.raises(client.BackupFailed, match="stored but not verified"):
        run.wait(timeout=30)
    row = rt.catalog.get(run.id)
    assert row.status == Status.UPLOADED and "no identity for key id" in row.error
    assert [e.kind for e in rt.catalog.events(backup_id=run.id)] == ["verify.incomplete"]
    done = run_cli("backup", "app-sqlite", "--wait", "--json", config=cfg, env=wrong_identity)
    assert done.returncode == 1 and json.loads(done.stdout)["status"] == "uploaded"


def test_a_rebuilt_backup_without_its_verified_marker_waits_for_verify_which_signs_it_again(tmp_path, make_config, runtime_for):
    tree = tmp_path / "t"
    tree.mkdir()
    (tree / "f").write_text("x")
    rt = runtime_for(make_config(f'[targets.t]\nkind = "files"\npaths = ["{tree}"]\n'))
    proven, unproven = (client.enqueue_backup("t", rt=rt).wait() for _ in range(2))
    marker = rt.storage("local").inner.root / manifest.verified_key("t", unproven["id"])
    marker.unlink()  # as if the verify's marker never reached storage
    rebuilt = rebuild_catalog(rt)
    assert rebuilt["backups"] == 2 and rebuilt["verified"] == 1
    assert (rt.catalog.get(proven["id"]).status, rt.catalog.get(proven["id"]).stage) == (Status.VERIFIED, "done")
    row = rt.catalog.get(unproven["id"])
    assert (row.status, row.stage, row.verified_at) == (Status.UPLOADED, "verify", None)  # the stage after upload
    verify_backup(rt, unproven["id"])
    assert rt.catalog.get(unproven["id"]).status == Status.VERIFIED
    signed = manifest.parse(marker.read_bytes(), backup_id=unproven["id"])
    manifest.check_signature(signed, rt.verifier, backup_id=unproven["id"])
    assert signed["checks"]["locations_checked"] == 1 and rebuild_catalog(rt)["verified"] == 2


def _imported(*args: str, config=None) -> set[str]:
    """The top-level packages a backupctl command imports (``-X importtime`` lists every module on stderr)."""
    argv = [sys.executable, "-X", "importtime", "-m", "backup_tasks.cli", *args] + (["--config", str(config)] if config else [])
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return {line.rsplit("|", 1)[1].strip().split(".")[0] for line in done.stderr.splitlines() if line.startswith("import time:")}


def test_commands_that_enqueue_nothing_start_without_celery_nor_rich_in_json_mode(tmp_path, make_config, runtime_for):
    # Every command pays its imports before it does anything; a restore's time is compared with
    # pg_restore's, so what a command does not need stays out of its start.
    db = tmp_path / "app.db"
    make_app_db(db)
    cfg = make_config(f'[targets.app-sqlite]\nkind = "sqlite"\npath = "{db}"\n')
    info = client.enqueue_backup("app-sqlite", rt=runtime_for(cfg)).wait()
    assert "sqlalchemy" not in _imported("--help")
    for command in (["list"], ["verify", info["id"]], ["restore", info["id"], "--to", str(tmp_path / "r.db")]):
        modules = _imported(*command, "--json", config=cfg)  # and in --json mode, without rich
        assert "sqlalchemy" in modules and not {"celery", "kombu", "rich"} & modules, command
    assert "rich" in _imported("list", config=cfg)
