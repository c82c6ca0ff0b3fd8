"""Runbook: rotate the encryption (and signing) keys, move every stored backup onto the new key, retire the old one.

Real keys, real backups of a SQLite database and a file tree on two tiers, the real
``backupctl`` for every step an operator takes, and the ``age`` CLI for the disaster path.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from backup_tasks import client
from backup_tasks.errors import KeyMissing, VerificationFailed
from backup_tasks.ops.keys import reencrypt
from backup_tasks.ops.keys.rotation import rotate
from backup_tasks.ops.keys.status import key_status
from backup_tasks.ops.rebuild import rebuild_catalog
from backup_tasks.ops.verify import verify_backup
from backup_tasks.orchestration import run_lock
from backup_tasks.records import keys
from conftest import run_cli
from databases import make_pg_database, pg_names  # noqa: F401  (fixture)
from s3server import s3_tier_toml
from test_postgres import pg_target
from test_sqlite_backup import make_app_db


def write_targets(path: Path, state: Path, *, recipients_file: Path, identities_file: Path, signing_key_file: Path,
                  signing_public_key_file: Path | None = None, targets: str, tiers: str | None = None) -> Path:
    """The targets file an operator edits when rotating: key settings, two tiers (local directories by default), the targets."""
    tiers = tiers or (f'[tiers.local]\nkind = "local"\npath = "{state / "store"}"\n'
                      f'[tiers.offsite]\nkind = "local"\npath = "{state / "offsite"}"\n')
    trusted = f'signing_public_key_file = "{signing_public_key_file}"\n' if signing_public_key_file else ""
    path.write_text(
        "[settings]\n"
        f'staging_dir = "{state / "staging"}"\n'
        f'catalog_url = "sqlite:///{state / "catalog.db"}"\n'
        f'recipients_file = "{recipients_file}"\n'
        f'identities_file = "{identities_file}"\n'
        f'signing_key_file = "{signing_key_file}"\n'
        f"{trusted}\n{tiers}\n{targets}\n"
    )
    return path


class Site:
    """Keys A on disk, a targets file using them, and the paths a rotation touches."""

    def __init__(self, root: Path, targets: str, tiers: str | None = None) -> None:
        self.root = root
        self.state = root / "state"
        self.old = root / "keys-a"
        keys.generate(self.old)
        self.identities = root / "identities.txt"
        self.identities.write_text((self.old / keys.IDENTITY_FILE).read_text())
        os.chmod(self.identities, 0o600)
        self.targets, self.tiers = targets, tiers
        self.config = write_targets(root / "targets.toml", self.state, recipients_file=self.old / keys.RECIPIENT_FILE,
                                    identities_file=self.identities, signing_key_file=self.old / keys.SIGNING_KEY_FILE,
                                    targets=targets, tiers=tiers)
        self.old_id = keys.key_id((self.old / keys.RECIPIENT_FILE).read_text())
        self.old_signing_id = keys.key_id((self.old / keys.SIGNING_PUB_FILE).read_text())

    def apply(self, rotation: dict) -> None:
        """Make the change ``keys rotate`` printed, exactly as printed."""
        subprocess.run(rotation["config_change"]["identities_file"]["command"], shell=True, check=True)
        s = rotation["config_change"]["settings"]
        write_targets(self.config, self.state, recipients_file=Path(s["recipients_file"]), identities_file=self.identities,
                      signing_key_file=Path(s.get("signing_key_file", self.old / keys.SIGNING_KEY_FILE)),
                      signing_public_key_file=Path(s["signing_public_key_file"]) if "signing_public_key_file" in s else None,
                      targets=self.targets, tiers=self.tiers)

    def data_objects(self, tier: str, target: str, backup_id: str) -> list[str]:
        folder = self.state / tier / target / backup_id
        return sorted(p.name for p in folder.iterdir() if p.name.startswith("data."))


def cli_json(*args, config: Path, check: int = 0) -> dict | list:
    return json.loads(run_cli(*args, "--json", config=config, check=check).stdout)


@pytest.fixture
def site(tmp_path):
    db = tmp_path / "app.db"
    make_app_db(db, rows=3000)
    tree = tmp_path / "site"
    (tree / "conf").mkdir(parents=True)
    (tree / "conf" / "nginx.conf").write_text("server { listen 80; }\n" * 40)
    (tree / "index.html").write_text("<h1>hello</h1>\n")
    s = Site(tmp_path, f'[targets.app-sqlite]\nkind = "sqlite"\npath = "{db}"\nstorage = ["local", "offsite"]\n'
                       f'[targets.site]\nkind = "files"\npaths = ["{tree}"]\nstorage = ["local", "offsite"]\n')
    s.db = db
    return s


def test_keys_rotate_writes_private_keys_prints_the_change_and_is_audited(site, runtime_for):
    new = site.root / "keys-b"
    rotation = cli_json("keys", "rotate", "--out", str(new), "--signing", config=site.config)

    assert os.stat(new).st_mode & 0o777 == 0o700
    for name in (keys.IDENTITY_FILE, keys.RECIPIENT_FILE, keys.SIGNING_KEY_FILE, keys.SIGNING_PUB_FILE, "trusted-signing.pub"):
        assert os.stat(new / name).st_mode & 0o777 == 0o600, name
    change = rotation["config_change"]
    assert change["settings"] == {"recipients_file": str(new / keys.RECIPIENT_FILE),
                                  "signing_key_file": str(new / keys.SIGNING_KEY_FILE),
                                  "signing_public_key_file": str(new / "trusted-signing.pub")}
    assert change["identities_file"]["command"] == f"cat {new / keys.IDENTITY_FILE} >> {site.identities}"
    assert rotation["previous_recipient_key_ids"] == [site.old_id]
    assert rotation["recipient_key_id"] == keys.key_id((new / keys.RECIPIENT_FILE).read_text())
    # the old signing key stays trusted beside the new one, or every manifest signed so far would stop verifying
    trusted = (new / "trusted-signing.pub").read_text().split()
    assert trusted == [(site.old / keys.SIGNING_PUB_FILE).read_text().strip(), (new / keys.SIGNING_PUB_FILE).read_text().strip()]
    # no private key material in what it printed
    assert "AGE-SECRET-KEY" not in json.dumps(rotation) and "PRIVATE KEY" not in json.dumps(rotation)

    rt = runtime_for(site.config)
    entry = rt.catalog.audit(action="keys.rotate")[0]
    assert entry.outcome == "ok" and entry.detail["recipient_key_id"] == rotation["recipient_key_id"]
    assert entry.detail["previous_recipient_key_ids"] == [site.old_id]

    status = key_status(rt)
    roles = {k["key_id"]: k["role"] for k in status["keys"]}
    assert roles == {site.old_id: "current", rotation["recipient_key_id"]: "new"}

    again = cli_json("keys", "rotate", "--out", str(new), config=site.config, check=2)
    assert "refusing to overwrite" in again["error"]["message"]


def test_old_manifests_verify_while_their_signing_key_is_trusted_and_identities_are_picked_by_key_id(site, runtime_for):
    rt = runtime_for(site.config)
    old = client.enqueue_backup("app-sqlite", rt=rt).wait()
    rotation = cli_json("keys", "rotate", "--out", str(site.root / "keys-b"), "--signing", config=site.config)
    site.apply(rotation)
    rt = runtime_for(site.config)
    new = client.enqueue_backup("app-sqlite", rt=rt).wait()
    assert new["status"] == "verified" and new["key_ids"] == [rotation["recipient_key_id"]]
    # one identities file with both keys: each backup is read with the identity its object needs
    assert verify_backup(rt, old["id"])["status"] == "verified"
    assert verify_backup(rt, new["id"])["status"] == "verified"

    # a trusted-keys list without the old signing key: the old manifest is refused, naming that key
    only_new = site.root / "only-new.pub"
    only_new.write_text((site.root / "keys-b" / keys.SIGNING_PUB_FILE).read_text())
    rt = runtime_for(site.config, BACKUP_SIGNING_PUBLIC_KEY_FILE=str(only_new))
    with pytest.raises(VerificationFailed) as refused:
        verify_backup(rt, old["id"])
    assert refused.value.check == "manifest-signature" and site.old_signing_id in refused.value.message
    assert verify_backup(rt, new["id"])["status"] == "verified"

    # the old identity gone: the old backup cannot be read, and the error names the key id to bring back
    site.identities.write_text((site.root / "keys-b" / keys.IDENTITY_FILE).read_text())
    rt = runtime_for(site.config)
    with pytest.raises(KeyMissing) as missing:
        verify_backup(rt, old["id"])
    assert site.old_id in missing.value.message
    done = run_cli("restore", old["id"], "--to", str(site.root / "x.db"), "--json", config=site.config, check=2)
    assert site.old_id in json.loads(done.stdout)["error"]["message"]


def test_rotate_reencrypt_and_retire_the_old_key(site, runtime_for, tmp_path):
    rt = runtime_for(site.config)
    before = [client.enqueue_backup(t, rt=rt).wait() for t in ("app-sqlite", "site")]
    rotation = cli_json("keys", "rotate", "--out", str(site.root / "keys-b"), "--signing", config=site.config)
    new_id = rotation["recipient_key_id"]
    site.apply(rotation)
    rt = runtime_for(site.config)
    after = [client.enqueue_backup(t, rt=rt).wait() for t in ("app-sqlite", "site")]

    listed = {e["id"]: e for e in client.recent_runs(rt=rt)}
    assert all(listed[b["id"]]["key_ids"] == [site.old_id] for b in before)
    assert all(listed[b["id"]]["key_ids"] == [new_id] for b in after)
    status = {k["key_id"]: k for k in key_status(rt)["keys"]}
    assert status[site.old_id]["role"] == "old" and not status[site.old_id]["deletable"]
    assert status[site.old_id]["tiers"] == {t: {"backups": 2, "objects": 2, "wal_files": 0, "binlogs": 0} for t in ("local", "offsite")}
    assert status[new_id]["role"] == "current" and status[new_id]["backups"] == 2

    planned = cli_json("reencrypt", "--dry-run", config=site.config)
    assert sorted(b["backup_id"] for b in planned["backups"]) == sorted(b["id"] for b in before)
    assert {b["outcome"] for b in planned["backups"]} == {"would-reencrypt"}
    assert site.data_objects("store", "app-sqlite", before[0]["id"]) == ["data.sqlite.zst.age"]

    done = cli_json("reencrypt", config=site.config)
    assert done["counts"] == {"reencrypted": 2} and done["to_key_ids"] == [new_id]
    for b in before:
        for tier in ("store", "offsite"):  # the new object only, on both tiers
            assert [n.split(".")[-2] for n in site.data_objects(tier, b["target"], b["id"])] == ["r2"]
        doc = json.loads((site.state / "offsite" / b["target"] / b["id"] / "manifest.json").read_text())
        assert doc["revision"] == 2 and doc["encryption"]["recipients"] == [new_id]
        assert doc["replaces"]["revision"] == 1 and doc["replaces"]["key_ids"] == [site.old_id]
        assert doc["replaces"]["signed_by"] == site.old_signing_id and doc["signature"]["key_id"] == rotation["signing_key_id"]
        # verified backups: the read-back that decrypted the new object before the commit is the recorded verification
        marker = json.loads((site.state / "offsite" / b["target"] / b["id"] / "verified.json").read_text())
        assert marker["stored_sha256"] == doc["stored"]["sha256"] and "read-back" in marker["checks"]["method"]
    assert reencrypt.select(runtime_for(site.config)) == []  # nothing left on the old key

    # the old identity deleted: every backup still verifies and restores
    site.identities.write_text((site.root / "keys-b" / keys.IDENTITY_FILE).read_text())
    rt = runtime_for(site.config)
    for b in before + after:
        assert verify_backup(rt, b["id"])["status"] == "verified"
    restored = tmp_path / "restored.db"
    run_cli("restore", before[0]["id"], "--to", str(restored), config=site.config, check=0)
    assert sqlite3.connect(restored).execute("select count(*) from orders").fetchone()[0] == 3000

    status = {k["key_id"]: k for k in cli_json("keys", "status", config=site.config)["keys"]}
    assert status[site.old_id]["role"] == "retired" and status[site.old_id]["deletable"]
    assert status[site.old_id]["backups"] == 0 and status[site.old_id]["tiers"] == {}
    assert status[new_id]["backups"] == 4

    # the disaster path: the new identity and the age and zstd CLIs, no code of ours
    obj = site.state / "offsite" / "app-sqlite" / before[0]["id"] / site.data_objects("offsite", "app-sqlite", before[0]["id"])[0]
    plain = tmp_path / "by-hand.db"
    age = subprocess.Popen(["age", "-d", "-i", str(site.root / "keys-b" / keys.IDENTITY_FILE), str(obj)], stdout=subprocess.PIPE)
    with open(plain, "wb") as out:
        subprocess.run(["zstd", "-d", "-c"], stdin=age.stdout, stdout=out, check=True)
    assert age.wait() == 0
    assert sqlite3.connect(plain).execute("PRAGMA integrity_check").fetchone()[0] == "ok"

    # the catalog rebuilt from storage alone knows the revisions, their keys and that they were verified
    rt.catalog.engine.dispose()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{site.state / 'catalog.db'}{suffix}").unlink(missing_ok=True)
    rebuilt = cli_json("catalog", "rebuild", config=site.config)
    assert rebuilt["backups"] == 4 and rebuilt["verified"] == 4 and rebuilt["skipped"] == []
    listed = cli_json("list", config=site.config)
    assert {tuple(e["key_ids"]) for e in listed} == {(new_id,)}
    assert all(e["status"] == "verified" and len(e["locations"]) == 2 for e in listed)


def _start_reencrypt(config: Path, target: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "backup_tasks.cli", "reencrypt", "--target", target, "--json",
                             "--config", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=os.environ.copy())


def _kill_when(proc: subprocess.Popen, seen, timeout: float = 60) -> bool:
    """SIGKILL ``proc`` the moment ``seen()`` is true; whether it was still running then."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if seen():
            alive = proc.poll() is None
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return alive
        if proc.poll() is not None:
            return False
        time.sleep(0.002)
    proc.kill()
    raise AssertionError("reencrypt neither reached the kill point nor finished")


def test_a_kill_at_any_step_leaves_a_verifiable_copy_and_a_rerun_finishes(tmp_path, runtime_for):
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "random.bin").write_bytes(os.urandom(12 << 20))  # incompressible: every step moves 12 MiB
    targets = "".join(f'[targets.t{n}]\nkind = "files"\npaths = ["{tree}"]\nstorage = ["local", "offsite"]\n' for n in range(3))
    site = Site(tmp_path, targets)
    rt = runtime_for(site.config)
    runs = [client.enqueue_backup(f"t{n}", rt=rt).wait() for n in range(3)]
    site.apply(rotate(tmp_path / "keys-b", signing=False, settings=rt.settings))

    def folder(tier, n):
        return site.state / tier / f"t{n}" / runs[n]["id"]

    kill_points = [
        # while the new object is being written on the first tier
        lambda: any(".r2." in p.name for p in folder("store", 0).iterdir()),
        # once it is complete on the second tier: read-back, manifest revision, verify and delete are ahead
        lambda: (folder("offsite", 1) / "data.tar.zst.r2.age").exists(),
        # once the revision is committed on the first tier: verify and the old object's deletion are ahead
        lambda: b'"revision": 2' in (folder("store", 2) / "manifest.json").read_bytes(),
    ]
    killed = 0
    for n, seen in enumerate(kill_points):
        killed += _kill_when(_start_reencrypt(site.config, f"t{n}"), seen)
        # whatever the kill left, the backup verifies from what its manifest names, on both tiers
        rt = runtime_for(site.config, BACKUP_VERIFY_ALL_LOCATIONS="true")
        assert verify_backup(rt, runs[n]["id"])["status"] == "verified"

    # one rerun finishes every backup
    done = cli_json("reencrypt", config=site.config)
    assert {b["backup_id"] for b in done["backups"]} <= {r["id"] for r in runs}
    assert killed >= 1  # at least the kill mid-write found the run alive (a temp file exists only while it writes)
    rt = runtime_for(site.config, BACKUP_VERIFY_ALL_LOCATIONS="true")
    for n, run in enumerate(runs):
        for tier in ("store", "offsite"):
            assert site.data_objects(tier, f"t{n}", run["id"]) == ["data.tar.zst.r2.age"], (n, tier)
        assert verify_backup(rt, run["id"])["status"] == "verified"
    status = {k["key_id"]: k for k in key_status(rt)["keys"]}
    assert status[site.old_id]["role"] == "retired"
    assert reencrypt.select(rt) == []


def test_a_new_object_altered_before_its_proof_is_refused_and_the_old_one_kept(tmp_path, runtime_for):
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "random.bin").write_bytes(os.urandom(9 << 20))  # over the size whose proof runs in an age child
    site = Site(tmp_path, f'[targets.t]\nkind = "files"\npaths = ["{tree}"]\nstorage = ["local", "offsite"]\n')
    rt = runtime_for(site.config)
    run = client.enqueue_backup("t", rt=rt).wait()
    site.apply(rotate(tmp_path / "keys-b", signing=False, settings=rt.settings))
    folder = site.state / "store" / "t" / run["id"]
    flipped = []

    def flip_before_the_proof(stage, done, total):
        # The new object is written and copied; the read-back that must prove it decrypts to the
        # signed plaintext starts now: one bit of the copy it reads changes under it.
        if stage == "verify" and not flipped:
            with open(folder / "data.tar.zst.r2.age", "r+b") as fh:
                fh.seek(total // 2)
                byte = fh.read(1)[0]
                fh.seek(total // 2)
                fh.write(bytes([byte ^ 0x10]))
            flipped.append(stage)

    rt = runtime_for(site.config)
    result = reencrypt.reencrypt_backup(rt, run["id"], progress=flip_before_the_proof)
    assert flipped and result["outcome"] == "failed", result
    # nothing was committed: the old manifest names the old object, which is still on both tiers and verifies
    for tier in ("store", "offsite"):
        doc = json.loads((site.state / tier / "t" / run["id"] / "manifest.json").read_text())
        assert doc.get("revision", 1) == 1 and doc["encryption"]["recipients"] == [site.old_id]
        assert "data.tar.zst.age" in site.data_objects(tier, "t", run["id"])
    assert rt.catalog.get(run["id"]).manifest["encryption"]["recipients"] == [site.old_id]
    assert verify_backup(runtime_for(site.config, BACKUP_VERIFY_ALL_LOCATIONS="true"), run["id"])["status"] == "verified"
    # a rerun rewrites the revision and moves the backup
    assert reencrypt.reencrypt_backup(runtime_for(site.config), run["id"])["outcome"] == "reencrypted"
    assert site.data_objects("store", "t", run["id"]) == ["data.tar.zst.r2.age"]


def test_s3_copies_are_reencrypted_and_an_object_locked_one_is_skipped_with_its_reason(tmp_path, runtime_for, s3_server, s3_env):
    locked, plain = s3_server.make_bucket(object_lock=True), s3_server.make_bucket()
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "a.txt").write_text("locked for two days\n" * 100)
    site = Site(tmp_path, f'[targets.t]\nkind = "files"\npaths = ["{tree}"]\nstorage = ["local", "offsite"]\n'
                          f'[targets.u]\nkind = "files"\npaths = ["{tree}"]\nstorage = ["local", "cloud"]\n',
                tiers=f'[tiers.local]\nkind = "local"\npath = "{tmp_path / "state" / "store"}"\n'
                      + s3_tier_toml(s3_server, locked, max_age_days=2, object_lock="compliance")
                      + s3_tier_toml(s3_server, plain, name="cloud"))
    rt = runtime_for(site.config)
    run, other = client.enqueue_backup("t", rt=rt).wait(), client.enqueue_backup("u", rt=rt).wait()
    site.apply(cli_json("keys", "rotate", "--out", str(tmp_path / "keys-b"), config=site.config))

    done = {b["backup_id"]: b for b in cli_json("reencrypt", config=site.config)["backups"]}
    assert done[other["id"]]["outcome"] == "reencrypted"
    assert done[run["id"]]["outcome"] == "skipped"
    assert "tier 'offsite' is Object-Locked until " in done[run["id"]]["reason"] and "again" in done[run["id"]]["reason"]
    rt = runtime_for(site.config, BACKUP_VERIFY_ALL_LOCATIONS="true")
    # on S3 too, only the new object is left, and it verifies in full on both tiers
    assert [o.key.rsplit("/", 1)[1] for o in rt.storage("cloud").list(f"u/{other['id']}/data.")] == ["data.tar.zst.r2.age"]
    assert verify_backup(rt, other["id"])["status"] == "verified"
    # the locked one is left whole: the old object and revision on both tiers, still verifiable, the old key still needed
    assert site.data_objects("store", "t", run["id"]) == ["data.tar.zst.age"]
    assert [o.key.rsplit("/", 1)[1] for o in rt.storage("offsite").list(f"t/{run['id']}/data.")] == ["data.tar.zst.age"]
    assert verify_backup(rt, run["id"])["status"] == "verified"
    status = {k["key_id"]: k for k in key_status(rt)["keys"]}
    assert status[site.old_id]["role"] == "old" and status[site.old_id]["tiers"] == {
        t: {"backups": 1, "objects": 1, "wal_files": 0, "binlogs": 0} for t in ("local", "offsite")}


def test_reencrypt_wait_runs_the_tasks_on_a_real_verify_worker(site, runtime_for, redis_url, start_worker):
    rt = runtime_for(site.config)
    before = [client.enqueue_backup(t, rt=rt).wait() for t in ("app-sqlite", "site")]
    site.apply(cli_json("keys", "rotate", "--out", str(site.root / "keys-b"), config=site.config))
    worker = start_worker(site.config, redis_url, ["verify"], name="verifier@localhost")

    done = json.loads(run_cli("reencrypt", "--wait", "--timeout", "120", "--json", config=site.config,
                              env={"BACKUP_BROKER_URL": redis_url}, check=0).stdout)
    assert sorted(b["backup_id"] for b in done["backups"]) == sorted(b["id"] for b in before)
    assert done["counts"] == {"reencrypted": 2}
    assert b"backup.reencrypt" in worker.log.read_bytes()  # the worker did it, not the CLI
    rt = runtime_for(site.config)
    assert {tuple(e["key_ids"]) for e in client.recent_runs(rt=rt)} == {(done["to_key_ids"][0],)}
    audited = rt.catalog.audit(action="backup.reencrypt")  # each backup's move, by the operator who asked
    assert sorted(e.backup_id for e in audited) == sorted(b["id"] for b in before)
    assert all(e.outcome == "ok" and e.actor.startswith("cli:") for e in audited)


def test_a_revision_on_one_tier_only_is_indexed_by_rebuild_and_finished_by_a_rerun(site, runtime_for):
    rt = runtime_for(site.config)
    run = client.enqueue_backup("site", rt=rt).wait()
    folders = {tier: site.state / tier / "site" / run["id"] for tier in ("store", "offsite")}
    saved = {(tier, name): (folder / name).read_bytes() for tier, folder in folders.items()
             for name in ("data.tar.zst.age", "manifest.json")}
    site.apply(cli_json("keys", "rotate", "--out", str(site.root / "keys-b"), config=site.config))
    rt = runtime_for(site.config)
    assert reencrypt.reencrypt_backup(rt, run["id"])["outcome"] == "reencrypted"
    # Put storage back as a kill between the two tiers' manifest writes leaves it: revision 2 on
    # the first tier, revision 1 on the second, and the old object not yet deleted on either.
    (folders["store"] / "data.tar.zst.age").write_bytes(saved["store", "data.tar.zst.age"])
    (folders["offsite"] / "data.tar.zst.age").write_bytes(saved["offsite", "data.tar.zst.age"])
    (folders["offsite"] / "manifest.json").write_bytes(saved["offsite", "manifest.json"])
    assert verify_backup(runtime_for(site.config, BACKUP_VERIFY_ALL_LOCATIONS="true"), run["id"])["status"] == "verified"

    # a rebuilt catalog takes the newest revision, reports the tier still on the older one,
    # and counts the old object as still depending on the old key
    rebuilt = rebuild_catalog(rt)
    assert rebuilt["unfinished_reencryptions"] == [run["id"]]
    assert [s["tier"] for s in rebuilt["skipped"]] == ["offsite"] and "older than revision 2" in rebuilt["skipped"][0]["reason"]
    assert [loc.tier for loc in rt.catalog.get(run["id"]).locations] == ["local"]
    status = {k["key_id"]: k for k in key_status(rt)["keys"]}
    assert status[site.old_id]["role"] == "old" and status[site.old_id]["tiers"]["local"]["objects"] == 1

    # while another re-encryption of this backup holds its lock, a second one keeps its hands off
    other = run_lock.for_reencryption(rt.settings, run["id"])
    assert other.acquire("another-task") is None
    try:
        [busy] = cli_json("reencrypt", config=site.config)["backups"]
        assert busy["outcome"] == "skipped" and "another-task" in busy["reason"]
    finally:
        other.release("another-task")
    done = cli_json("reencrypt", config=site.config)
    assert [(b["backup_id"], b["outcome"]) for b in done["backups"]] == [(run["id"], "reencrypted")]
    for tier, folder in folders.items():
        assert site.data_objects(tier, "site", run["id"]) == ["data.tar.zst.r2.age"], tier
        assert json.loads((folder / "manifest.json").read_text())["revision"] == 2
    rt = runtime_for(site.config)
    assert sorted(loc.tier for loc in rt.catalog.get(run["id"]).locations) == ["local", "offsite"]
    assert {k["key_id"]: k["role"] for k in key_status(rt)["keys"]}[site.old_id] == "retired"


def test_sealed_postgres_globals_move_to_the_new_key_too(tmp_path, runtime_for, pg_names):
    source = pg_names("bt_rekey")
    make_pg_database(source, "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 50);")
    site = Site(tmp_path, pg_target("ledger-db", source, extra='options = { globals = "no-role-passwords" }\nstorage = ["local"]\n'))
    rt = runtime_for(site.config)
    run = client.enqueue_backup("ledger-db", rt=rt).wait()
    assert run["status"] == "verified"
    site.apply(rotate(tmp_path / "keys-b", signing=False, settings=rt.settings))
    assert reencrypt.reencrypt_backup(runtime_for(site.config), run["id"])["outcome"] == "reencrypted"

    # with the new identity alone, the dump and the globals sealed in the manifest both still open
    site.identities.write_text((tmp_path / "keys-b" / keys.IDENTITY_FILE).read_text())
    checked = verify_backup(runtime_for(site.config), run["id"])
    assert checked["status"] == "verified" and checked["attachments_checked"] == ["globals.sql"]


def test_a_reencryption_held_back_by_an_object_lock_is_retried_by_the_daily_job_once_the_lock_ends(tmp_path, runtime_for,
                                                                                                  s3_server, s3_env):
    from backup_tasks.orchestration import tasks

    bucket = s3_server.make_bucket(object_lock=True)
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "a.txt").write_text("kept under a short lock\n" * 100)
    local = f'[tiers.local]\nkind = "local"\npath = "{tmp_path / "state" / "store"}"\n'
    site = Site(tmp_path, f'[targets.t]\nkind = "files"\npaths = ["{tree}"]\nstorage = ["local", "offsite"]\n',
                tiers=local + s3_tier_toml(s3_server, bucket))
    rt = runtime_for(site.config)
    run = client.enqueue_backup("t", rt=rt).wait()
    # The stored copy is put under a COMPLIANCE lock that ends in a few seconds (a tier's own locks last whole days),
    # and the tier is then configured as the locking tier it is.
    key = rt.catalog.get(run["id"]).locations[-1].key
    site.tiers = local + s3_tier_toml(s3_server, bucket, max_age_days=1, object_lock="compliance")
    started = time.monotonic()
    site.apply(cli_json("keys", "rotate", "--out", str(tmp_path / "keys-b"), config=site.config))
    # Long enough for the reencrypt call below (a CLI call like the one just timed) and the daily
    # job to run inside it however loaded the machine is, and no longer: the test waits it out.
    lock_ends = datetime.now(timezone.utc) + timedelta(seconds=max(4.0, 4 * (time.monotonic() - started)))
    s3_server.client().put_object_retention(Bucket=bucket, Key=key, Retention={"Mode": "COMPLIANCE", "RetainUntilDate": lock_ends})

    [skipped] = cli_json("reencrypt", config=site.config)["backups"]
    assert skipped["outcome"] == "skipped" and "Object-Locked until" in skipped["reason"]
    until = datetime.fromisoformat(skipped["locked_until"].replace("Z", "+00:00"))
    assert abs((until - lock_ends).total_seconds()) < 1.5
    rt = runtime_for(site.config)
    [deferred] = rt.catalog.audit(action="backup.reencrypt")
    assert deferred.outcome == "deferred" and deferred.backup_id == run["id"]
    assert deferred.detail["locked_until"] == skipped["locked_until"]

    # Beat's daily job, before the lock ends: nothing is due, nothing changes.
    assert tasks.reencrypt_unlocked.apply().get() == {"enqueued": []}
    assert site.data_objects("store", "t", run["id"]) == ["data.tar.zst.age"]

    time.sleep(max(0.0, (until - datetime.now(timezone.utc)).total_seconds()) + 1.0)
    # After it: the job sends the re-encryption again, and this time the backup moves on both tiers.
    assert tasks.reencrypt_unlocked.apply().get() == {"enqueued": [run["id"]]}
    rt = runtime_for(site.config, BACKUP_VERIFY_ALL_LOCATIONS="true")
    assert site.data_objects("store", "t", run["id"]) == ["data.tar.zst.r2.age"]
    assert [o.key.rsplit("/", 1)[1] for o in rt.storage("offsite").list(f"t/{run['id']}/data.")] == ["data.tar.zst.r2.age"]
    assert verify_backup(rt, run["id"])["status"] == "verified"
    newest = rt.catalog.audit(action="backup.reencrypt")[0]
    assert newest.outcome == "ok" and newest.actor == "beat"
    assert {k["key_id"]: k["role"] for k in key_status(rt)["keys"]}[site.old_id] == "retired"
    assert tasks.reencrypt_unlocked.apply().get() == {"enqueued": []}  # done once


def test_a_reencrypt_task_shows_its_progress_and_its_upload_keeps_to_the_tiers_bandwidth_limit(tmp_path, runtime_for, redis_url,
                                                                                                start_worker, s3_server, s3_env):
    from celery.result import AsyncResult

    from backup_tasks.orchestration import tasks

    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "random.bin").write_bytes(os.urandom(12 << 20))  # incompressible: 12 MiB to re-encrypt and upload
    bucket = s3_server.make_bucket()
    # the S3 tier first: the re-encrypted stream is uploaded straight to it, through its 3 MiB/s limit
    site = Site(tmp_path, f'[targets.t]\nkind = "files"\npaths = ["{tree}"]\nstorage = ["offsite", "local"]\n',
                tiers=s3_tier_toml(s3_server, bucket, bandwidth_limit="3MiB")
                + f'[tiers.local]\nkind = "local"\npath = "{tmp_path / "state" / "store"}"\n')
    rt = runtime_for(site.config)
    run = client.enqueue_backup("t", rt=rt).wait()
    site.apply(rotate(tmp_path / "keys-b", signing=False, settings=rt.settings))
    start_worker(site.config, redis_url, ["verify"], name="verifier@localhost")
    rt = runtime_for(site.config, BACKUP_BROKER_URL=redis_url)

    sent = tasks.reencrypt.apply_async(args=(run["id"], None, "test"), queue="verify")
    seen: list[tuple[float, dict]] = []  # what Flower's /api/task/result shows of the task while it runs
    deadline = time.monotonic() + 120
    while not sent.ready() and time.monotonic() < deadline:
        result = AsyncResult(sent.id)
        if result.state == "PROGRESS":
            seen.append((time.monotonic(), result.info))
        time.sleep(0.1)
    ended = time.monotonic()
    assert sent.get(timeout=5)["outcome"] == "reencrypted"

    moving = [(at, p) for at, p in seen if p["stage"] == "reencrypt"]
    assert moving and all(p["backup_id"] == run["id"] and p["target"] == "t" for _, p in moving)
    stored = rt.catalog.get(run["id"])
    total = moving[0][1]["bytes_total"]
    assert total > 12 << 20 and all(0 <= p["bytes_done"] <= total for _, p in moving)
    assert len({p["bytes_done"] for _, p in moving}) >= 2  # it moved while we watched
    # 12 MiB through 3 MiB/s (one second of burst): at least three seconds from the first report (unthrottled: about one)
    assert ended - moving[0][0] >= 2.5, ended - moving[0][0]
    assert stored.manifest["revision"] == 2 and stored.size_stored > 12 << 20
