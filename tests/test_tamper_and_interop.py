"""Runbook: what an attacker or a bad disk does to stored backups, and the disaster path without our code."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess

import pytest

from backup_tasks import client
from backup_tasks.records import keys
from backup_tasks.records.catalog import Status
from conftest import run_cli
from test_sqlite_backup import make_app_db


@pytest.fixture
def two_backups(tmp_path, make_config, runtime_for):
    db = tmp_path / "app.db"
    make_app_db(db)
    tree = tmp_path / "site"
    (tree / "conf").mkdir(parents=True)
    (tree / "conf" / "nginx.conf").write_text("server { listen 80; }\n" * 50)
    (tree / "index.html").write_text("<h1>hello ünïcode</h1>\n")
    cfg = make_config(f'[targets.app-sqlite]\nkind = "sqlite"\npath = "{db}"\n'
                      f'[targets.site]\nkind = "files"\npaths = ["{tree}"]\n')
    rt = runtime_for(cfg)
    a = client.enqueue_backup("app-sqlite", rt=rt).wait()
    b = client.enqueue_backup("site", rt=rt).wait()
    return rt, cfg, a, b, tree


def artifact(rt, entry):
    loc = entry["locations"][0]
    return rt.storage(loc["tier"]).inner.root / loc["key"]


def test_one_flipped_byte_fails_verify_naming_backup_and_check(two_backups):
    rt, cfg, a, _, _ = two_backups
    path = artifact(rt, a)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))

    done = run_cli("verify", a["id"], "--json", config=cfg, check=1)
    result = json.loads(done.stdout)
    assert result["ok"] is False and result["check"] == "stored-sha256"
    assert a["id"] in result["message"]
    assert rt.catalog.get(a["id"]).status == Status.FAILED
    assert rt.catalog.events(kind="verify.failed")[-1].backup_id == a["id"]


def test_an_artifact_swapped_for_another_valid_one_is_caught_by_the_signed_manifest(two_backups):
    rt, cfg, a, b, _ = two_backups
    # Both are genuine age files to our recipient; an attacker with the public key could make either.
    shutil.copyfile(artifact(rt, b), artifact(rt, a))
    done = run_cli("verify", a["id"], "--json", config=cfg, check=1)
    assert json.loads(done.stdout)["check"] in ("stored-sha256", "stored-size")


def test_an_edited_manifest_fails_its_signature(two_backups):
    rt, cfg, a, _, _ = two_backups
    mpath = artifact(rt, a).with_name("manifest.json")
    doc = json.loads(mpath.read_text())
    doc["source"]["tables"]["orders"] = 1
    mpath.write_text(json.dumps(doc))
    done = run_cli("verify", a["id"], "--json", config=cfg, check=1)
    assert json.loads(done.stdout)["check"] == "manifest-signature"


def test_age_and_zstd_clis_recover_backups_without_our_code(two_backups, tmp_path, session_keys):
    rt, _, a, b, tree = two_backups
    identity = session_keys / keys.IDENTITY_FILE
    recovered = tmp_path / "recovered.db"
    with open(recovered, "wb") as out:
        _pipe([["age", "-d", "-i", str(identity), str(artifact(rt, a))], ["zstd", "-d", "-c"]], out)
    conn = sqlite3.connect(recovered)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert conn.execute("SELECT count(*) FROM orders").fetchone()[0] == 2000

    dest = tmp_path / "untarred"
    dest.mkdir()
    _pipe([["age", "-d", "-i", str(identity), str(artifact(rt, b))], ["zstd", "-d", "-c"], ["tar", "-x", "-C", str(dest)]], None)
    assert (dest / str(tree).lstrip("/") / "index.html").read_text() == "<h1>hello ünïcode</h1>\n"


def _pipe(argvs, stdout):
    procs = []
    prev = None
    for i, argv in enumerate(argvs):
        last = i == len(argvs) - 1
        p = subprocess.Popen(argv, stdin=prev, stdout=stdout if last else subprocess.PIPE, stderr=subprocess.PIPE)
        if prev is not None:
            prev.close()
        prev = p.stdout
        procs.append(p)
    for p in procs:
        _, err = p.communicate()
        assert p.returncode == 0, f"{p.args}: {err.decode()}"


def test_restore_refuses_without_the_identity_and_names_the_key_id(two_backups, tmp_path, runtime_for):
    rt, cfg, a, _, _ = two_backups
    key_id = rt.catalog.get(a["id"]).manifest["encryption"]["recipients"][0]
    done = run_cli("restore", a["id"], "--to", str(tmp_path / "x.db"), "--json", config=cfg,
                   env={"BACKUP_IDENTITIES_FILE": str(tmp_path / "other-identities.txt")})
    assert done.returncode == 2, done.stdout + done.stderr
    err = json.loads(done.stdout)["error"]
    assert err["type"] in ("KeyMissing", "ConfigError")
    other = tmp_path / "other"
    keys.generate(other)
    done = run_cli("restore", a["id"], "--to", str(tmp_path / "x.db"), "--json", config=cfg,
                   env={"BACKUP_IDENTITIES_FILE": str(other / keys.IDENTITY_FILE)})
    assert done.returncode == 2
    err = json.loads(done.stdout)["error"]
    assert err["type"] == "KeyMissing" and key_id in err["message"]
    assert not (tmp_path / "x.db").exists()


def test_restore_never_overwrites_without_force(two_backups, tmp_path):
    rt, cfg, _, b, tree = two_backups
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "precious.txt").write_text("keep me")
    done = run_cli("restore", b["id"], "--to", str(dest), "--json", config=cfg, check=2)
    assert json.loads(done.stdout)["error"]["type"] == "RestoreRefused"
    assert sorted(p.name for p in dest.iterdir()) == ["precious.txt"]

    plan = json.loads(run_cli("restore", b["id"], "--to", str(dest), "--dry-run", "--json", config=cfg, check=0).stdout)
    assert plan["dry_run"] is True and plan["needs_force"] is True
    assert any(p.endswith("index.html") for p in plan["would_write"])
    assert sorted(p.name for p in dest.iterdir()) == ["precious.txt"]

    run_cli("restore", b["id"], "--to", str(dest), "--force", config=cfg, check=0)
    assert (dest / "precious.txt").read_text() == "keep me"
    assert (dest / str(tree).lstrip("/") / "conf" / "nginx.conf").exists()
