"""The s3 tier against a real S3 server (SeaweedFS, signatures checked): the shared
conformance suite, then what only S3 has: multipart, integrity, credentials, Object Lock."""

from __future__ import annotations

import io
import os
import stat
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pytest

pytest.register_assert_rewrite("storage_conformance")

from storage_conformance import MiB, GeneratedReader, StorageConformance, breaking_chunks, keys, pattern_chunks, read_all, sha256_of  # noqa: E402

from backup_tasks.errors import ConfigError, ObjectLocked, ObjectNotFound, ServiceUnavailable, StorageError  # noqa: E402
from backup_tasks.storage import RetryingStorage, open_tier  # noqa: E402
from backup_tasks.storage.s3 import PART_SIZE, S3Storage, open_s3_tier, s3_credentials  # noqa: E402
from s3server import ACCESS_KEY, SECRET_KEY  # noqa: E402


def tier(server, bucket, name="offsite", credentials="env:BACKUP_S3", max_age_days=90, **options):
    return SimpleNamespace(name=name, kind="s3", path=None, max_age_days=max_age_days, credentials=credentials,
                           options={"bucket": bucket, "endpoint_url": server.endpoint, "region": "us-east-1",
                                    "path_style": True, **options})


@pytest.fixture
def storage(s3_server, s3_bucket, s3_env):
    return open_s3_tier(tier(s3_server, s3_bucket))


class TestS3Conformance(StorageConformance):
    #: the put loads the client and its service models (~16 MiB of Python heap) on first use; the parts
    #: themselves are mappings outside that heap, bounded by the test of a large put's peak RSS below
    max_put_peak_bytes = 5 * PART_SIZE + 4 * MiB


class TestS3UnderPrefixConformance(StorageConformance):
    max_put_peak_bytes = 5 * PART_SIZE + 4 * MiB

    @pytest.fixture
    def storage(self, s3_server, s3_bucket, s3_env):
        # a neighbour outside the prefix must stay invisible to list
        s3_server.client().put_object(Bucket=s3_bucket, Key="other-app/file", Body=b"not ours")
        return RetryingStorage(open_s3_tier(tier(s3_server, s3_bucket, prefix="backups/")))


def incomplete(server, bucket):
    return server.client().list_multipart_uploads(Bucket=bucket).get("Uploads", [])


def test_large_object_goes_up_in_parallel_parts_with_checked_etags(storage, s3_server, s3_bucket):
    size = 3 * PART_SIZE + 123
    info = storage.put("db/big", GeneratedReader(pattern_chunks(size)), size_hint=size)
    assert info.size == size and info.sha256 == sha256_of(pattern_chunks(size))
    assert info.etag.endswith("-4")  # four parts, completed with the expected multipart ETag
    head = s3_server.client().head_object(Bucket=s3_bucket, Key="db/big")
    assert head["ContentLength"] == size
    assert incomplete(s3_server, s3_bucket) == []


def _vm_bytes(field: str) -> int:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith(field + ":")) * 1024


def test_a_large_put_holds_a_few_parts_in_memory_whatever_its_size(storage):
    # The parts live in mappings of their own, which tracemalloc (the conformance suite's
    # bound) does not see: the process's peak RSS, reset just before the put, bounds them.
    size = 16 * PART_SIZE
    storage.put("db/first", io.BytesIO(b"the client and its models are loaded before the measure"))
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # VmHWM := VmRSS
    before = _vm_bytes("VmRSS")
    info = storage.put("db/huge", GeneratedReader(pattern_chunks(size)), size_hint=size)
    grown = _vm_bytes("VmHWM") - before
    assert info.size == size
    assert grown < 6 * PART_SIZE, f"a put of {size // MiB} MiB grew the process by {grown / MiB:.0f} MiB"


def test_a_source_failing_mid_multipart_aborts_the_upload(storage, s3_server, s3_bucket):
    from storage_conformance import SourceBroke

    with pytest.raises(SourceBroke):
        storage.put("db/partial", GeneratedReader(breaking_chunks(2 * PART_SIZE + MiB)))
    assert incomplete(s3_server, s3_bucket) == []
    assert list(storage.list()) == []


def test_wrong_secret_is_a_clear_storage_error_that_names_no_secret(s3_server, s3_bucket, monkeypatch):
    monkeypatch.setenv("BAD_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("BAD_SECRET_ACCESS_KEY", "not-the-secret-at-all")
    bad = open_s3_tier(tier(s3_server, s3_bucket, credentials="env:BAD"))
    with pytest.raises(StorageError) as caught:
        bad.put("k", io.BytesIO(b"x"))
    text = str(caught.value) + repr(bad)
    assert "SignatureDoesNotMatch" in text and "credentials referenced by tier 'offsite'" in text
    assert "not-the-secret-at-all" not in text and ACCESS_KEY not in text


def test_missing_bucket_and_missing_env_credentials(s3_server, s3_env, monkeypatch):
    with pytest.raises(StorageError, match="create bucket 'no-such-bucket-here'"):
        list(open_s3_tier(tier(s3_server, "no-such-bucket-here")).list())
    monkeypatch.delenv("BACKUP_S3_SECRET_ACCESS_KEY")
    with pytest.raises(ConfigError, match="BACKUP_S3_SECRET_ACCESS_KEY not set"):
        open_s3_tier(tier(s3_server, "whatever")).stat("k")


def test_file_credentials_need_mode_0600(tmp_path, s3_server, s3_bucket):
    creds = tmp_path / "s3.cred"
    creds.write_text(f"# offsite bucket\n[default]\naws_access_key_id = {ACCESS_KEY}\nsecret_access_key={SECRET_KEY}\n")
    os.chmod(creds, 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        s3_credentials(f"file:{creds}", tier="offsite")
    os.chmod(creds, stat.S_IRUSR | stat.S_IWUSR)
    storage = open_s3_tier(tier(s3_server, s3_bucket, credentials=f"file:{creds}"))
    storage.put("via/file", io.BytesIO(b"ok"))
    assert read_all(storage, "via/file") == b"ok"


def test_unreachable_endpoint_is_service_unavailable_after_retries(s3_bucket, s3_env):
    from s3server import free_port_group

    dead = SimpleNamespace(endpoint=f"http://127.0.0.1:{free_port_group(1)[0]}")
    sleeps = []
    storage = RetryingStorage(open_s3_tier(tier(dead, s3_bucket)), attempts=3, sleep=sleeps.append)
    with pytest.raises(ServiceUnavailable) as caught:
        storage.stat("k")
    assert caught.value.exit_code == 3 and "cannot reach the endpoint" in caught.value.message
    assert len(sleeps) == 2


def test_sse_and_storage_class_are_sent(s3_server, s3_bucket, s3_env):
    storage = open_s3_tier(tier(s3_server, s3_bucket, storage_class="STANDARD_IA"))
    storage.put("k/sc", io.BytesIO(b"x" * 10))
    head = s3_server.client().head_object(Bucket=s3_bucket, Key="k/sc")
    assert head.get("StorageClass") == "STANDARD_IA"
    with pytest.raises(ConfigError, match="unknown sse"):
        open_s3_tier(tier(s3_server, s3_bucket, sse="rot13"))


def test_object_lock_refuses_deletes_until_retain_until(s3_server, s3_env):
    bucket = s3_server.make_bucket(object_lock=True)
    storage = open_s3_tier(tier(s3_server, bucket, object_lock="compliance", max_age_days=3))
    before = datetime.now(timezone.utc)
    storage.put("t/b1/data", io.BytesIO(b"locked bytes"))
    storage.put("t/b1/big", GeneratedReader(pattern_chunks(PART_SIZE + 5)))  # multipart is locked too
    for key in ("t/b1/data", "t/b1/big"):
        until = storage.locked_until(key)
        assert until is not None and before + timedelta(days=3) - timedelta(minutes=1) <= until <= datetime.now(timezone.utc) + timedelta(days=3)
        with pytest.raises(ObjectLocked) as caught:
            storage.delete(key)
        assert "Object Lock" in caught.value.message and caught.value.remedy
    assert read_all(storage, "t/b1/data") == b"locked bytes"  # no delete marker hid it either
    assert keys(storage.list("t/")) == ["t/b1/big", "t/b1/data"]


def test_delete_in_a_versioned_bucket_removes_every_version(s3_server, s3_env):
    bucket = s3_server.make_bucket(object_lock=True)  # lock-enabled buckets are versioned
    storage = open_s3_tier(tier(s3_server, bucket))  # this tier writes without locks
    storage.put("v/k", io.BytesIO(b"one"))
    storage.put("v/k", io.BytesIO(b"two"))
    storage.delete("v/k")
    versions = s3_server.client().list_object_versions(Bucket=bucket, Prefix="v/k")
    assert not versions.get("Versions") and not versions.get("DeleteMarkers")
    with pytest.raises(ObjectNotFound):
        storage.stat("v/k")


def test_only_a_tier_configured_with_object_lock_claims_it():
    from backup_tasks.storage.capabilities import DiskSpace, ObjectLock, Probe, StaleUploads

    def opened(**options):  # opening does no I/O: no server needed
        return open_tier(SimpleNamespace(name="offsite", kind="s3", path=None, max_age_days=90, credentials=None,
                                         options={"bucket": "b", **options}))

    plain, locked = opened(), opened(object_lock="compliance")
    assert isinstance(plain, Probe) and isinstance(plain, StaleUploads)
    assert not isinstance(plain, ObjectLock) and not isinstance(plain, DiskSpace)
    assert isinstance(locked, ObjectLock) and isinstance(locked, StaleUploads)


def test_open_tier_gives_a_retrying_s3_storage(s3_server, s3_bucket, s3_env):
    storage = open_tier(tier(s3_server, s3_bucket))
    assert isinstance(storage, RetryingStorage) and isinstance(storage.inner, S3Storage)
    assert SECRET_KEY not in repr(storage)


# -- the chain with an S3 tier: multi-tier upload, restore fallback, rebuild from S3 alone -----

import json  # noqa: E402
import shutil  # noqa: E402

from backup_tasks import client  # noqa: E402
from conftest import run_cli  # noqa: E402
from s3server import s3_tier_toml  # noqa: E402
from test_sqlite_backup import make_app_db  # noqa: E402


def tree_with_files(root):
    root.mkdir()
    (root / "a.txt").write_text("alpha\n" * 1000)
    (root / "sub").mkdir()
    (root / "sub" / "b.bin").write_bytes(os.urandom(300_000))
    return root


def test_multi_tier_backup_verifies_and_restore_falls_back_to_s3(tmp_path, make_config, s3_server, s3_bucket, s3_env):
    tree = tree_with_files(tmp_path / "tree")
    store = tmp_path / "store"
    cfg = make_config(f'[targets.t]\nkind = "files"\npaths = ["{tree}"]\nstorage = ["local", "offsite"]\n',
                      tiers=f'[tiers.local]\nkind = "local"\npath = "{store}"\n' + s3_tier_toml(s3_server, s3_bucket))
    done = json.loads(run_cli("backup", "t", "--json", config=cfg, check=0).stdout)
    assert done["status"] == "verified"
    assert [loc["tier"] for loc in done["locations"]] == ["local", "offsite"]
    prefix = f"t/{done['id']}/"
    in_s3 = sorted(o["Key"] for o in s3_server.client().list_objects_v2(Bucket=s3_bucket)["Contents"])
    assert in_s3 == sorted([done["locations"][1]["key"], prefix + "listing.jsonl.zst.age", prefix + "manifest.json",
                            prefix + "verified.json"])

    shutil.rmtree(store / "t" / done["id"])  # the local copy is lost
    restored = json.loads(run_cli("restore", done["id"], "--to", str(tmp_path / "out"), "--json", config=cfg, check=0).stdout)
    assert restored["location"] == "offsite"
    assert any("tier 'local' skipped" in note for note in restored["notes"])
    out = tmp_path / "out" / str(tree).lstrip("/")  # trees restore under their absolute path
    assert (out / "a.txt").read_text() == (tree / "a.txt").read_text()
    assert (out / "sub" / "b.bin").read_bytes() == (tree / "sub" / "b.bin").read_bytes()
    # verify now reports the missing copy instead of calling the backup good
    failed = run_cli("verify", done["id"], "--json", config=cfg)
    assert failed.returncode == 1 and json.loads(failed.stdout)["check"] == "stored-size"


def test_verify_compares_the_other_copies_etag_or_reads_them_all_when_configured(tmp_path, make_config, s3_server,
                                                                              s3_bucket, s3_env):
    tree = tree_with_files(tmp_path / "tree")
    store = tmp_path / "store"
    cfg = make_config(f'[targets.t]\nkind = "files"\npaths = ["{tree}"]\nstorage = ["local", "offsite"]\n'
                      f'[targets.u]\nkind = "files"\npaths = ["{tree}"]\nstorage = ["offsite", "local"]\n',
                      tiers=f'[tiers.local]\nkind = "local"\npath = "{store}"\n' + s3_tier_toml(s3_server, s3_bucket))
    # t: read in full from local; the S3 copy is checked by size and the ETag it had at upload
    t = json.loads(run_cli("backup", "t", "--json", config=cfg, check=0).stdout)
    s3_key = t["locations"][1]["key"]
    body = s3_server.client().get_object(Bucket=s3_bucket, Key=s3_key)["Body"].read()
    swapped = bytes(b ^ 0xFF for b in body[:16]) + body[16:]  # same size, other bytes
    s3_server.client().put_object(Bucket=s3_bucket, Key=s3_key, Body=swapped)
    failed = run_cli("verify", t["id"], "--json", config=cfg)
    assert failed.returncode == 1 and json.loads(failed.stdout)["check"] == "stored-etag"

    # u: read in full from S3; the local copy has no ETag, so an in-place change of the same size ...
    u = json.loads(run_cli("backup", "u", "--json", config=cfg, check=0).stdout)
    local = store / u["locations"][1]["key"]
    data = bytearray(local.read_bytes())
    data[-100] ^= 0x01
    local.write_bytes(bytes(data))
    # ... passes the default size check, and is found when every copy is read in full
    assert json.loads(run_cli("verify", u["id"], "--json", config=cfg, check=0).stdout)["ok"] is True
    strict = run_cli("verify", u["id"], "--json", config=cfg, env={"BACKUP_VERIFY_ALL_LOCATIONS": "true"})
    assert strict.returncode == 1 and json.loads(strict.stdout)["check"] == "stored-sha256"


def test_restore_skips_a_truncated_copy_with_a_note(tmp_path, make_config, s3_server, s3_bucket, s3_env, runtime_for):
    tree = tree_with_files(tmp_path / "tree")
    store = tmp_path / "store"
    cfg = make_config(f'[targets.t]\nkind = "files"\npaths = ["{tree}"]\nstorage = ["offsite", "local"]\n',
                      tiers=s3_tier_toml(s3_server, s3_bucket) + f'[tiers.local]\nkind = "local"\npath = "{store}"\n')
    rt = runtime_for(cfg)
    info = client.enqueue_backup("t", rt=rt).wait()
    key = info["locations"][0]["key"]
    s3_server.client().put_object(Bucket=s3_bucket, Key=key, Body=b"truncated")  # damaged first copy
    from backup_tasks.ops.restore import restore_backup

    result = restore_backup(rt, info["id"], tmp_path / "out")
    assert result["location"] == "local" and "tier 'offsite' skipped" in result["notes"][0]
    assert (tmp_path / "out" / str(tree).lstrip("/") / "a.txt").exists()


def test_catalog_rebuild_from_s3_alone_matches_the_list_before(tmp_path, make_config, s3_server, s3_bucket, s3_env, runtime_for):
    db = tmp_path / "app.db"
    make_app_db(db)
    tree = tree_with_files(tmp_path / "tree")
    cfg = make_config(f'[targets.app-sqlite]\nkind = "sqlite"\npath = "{db}"\nstorage = ["offsite"]\n'
                      f'[targets.t]\nkind = "files"\npaths = ["{tree}"]\nstorage = ["offsite"]\n',
                      tiers=s3_tier_toml(s3_server, s3_bucket))
    rt = runtime_for(cfg)
    for target in ("app-sqlite", "t", "app-sqlite"):
        assert client.enqueue_backup(target, rt=rt).wait()["status"] == "verified"
    # a half-written artifact without its manifest (debris) must not become a backup
    s3_server.client().put_object(Bucket=s3_bucket, Key="t/t-19990101T000000Z-abcdef/data.tar.zst.age", Body=b"partial")
    before = json.loads(run_cli("list", "--json", config=cfg, check=0).stdout)
    assert len(before) == 3 and all(r["locations"][0]["tier"] == "offsite" for r in before)

    catalog_file = tmp_path / "state" / "catalog.db"
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(f"{catalog_file}{suffix}"):
            os.remove(f"{catalog_file}{suffix}")
    assert not (tmp_path / "state" / "store").exists()  # nothing local to rebuild from: S3 alone
    rebuilt = json.loads(run_cli("catalog", "rebuild", "--json", config=cfg, check=0).stdout)
    assert rebuilt["backups"] == 3 and rebuilt["verified"] == 3
    after = json.loads(run_cli("list", "--json", config=cfg, check=0).stdout)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "error"} for r in rows]  # noqa: E731
    assert strip(after) == strip(before)


def test_s3_outage_mid_upload_fails_clearly_keeps_the_local_copy_and_a_rerun_succeeds(
        tmp_path, make_config, runtime_for, s3_env, caplog):
    import threading

    from s3server import SeaweedServer

    server = SeaweedServer(tmp_path / "weed", tmp_path / "weed.log").start()
    try:
        bucket = server.make_bucket()
        tree = tmp_path / "tree"
        tree.mkdir()
        (tree / "blob").write_bytes(os.urandom(24 * MiB))  # incompressible: ~24 MiB to upload
        # One task-level retry shows the upload stage is retried as a whole; the default five
        # would only repeat the same failure, each after its backoff, for half a minute more.
        cfg = make_config(f'[targets.t]\nkind = "files"\npaths = ["{tree}"]\nstorage = ["local", "offsite"]\n',
                          settings="task_max_retries = 1\n",
                          tiers=f'[tiers.local]\nkind = "local"\npath = "{tmp_path / "store"}"\n'
                                + s3_tier_toml(server, bucket, bandwidth_limit="6MiB"))
        rt = runtime_for(cfg)
        s3 = server.client()
        stopped = threading.Event()

        def stop_when_the_upload_is_under_way():
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                if s3.list_multipart_uploads(Bucket=bucket).get("Uploads"):
                    server.stop()  # SIGTERM mid-upload; weed takes seconds to go
                    stopped.set()
                    return
                time.sleep(0.05)

        import time

        watcher = threading.Thread(target=stop_when_the_upload_is_under_way)
        watcher.start()
        with caplog.at_level("WARNING"):
            run = client.enqueue_backup("t", rt=rt)
        watcher.join()
        assert stopped.is_set(), "the upload never started a multipart upload"
        info = run.info()
        assert info["status"] == "failed"
        assert "offsite" in info["error"] and "cannot reach the endpoint" in info["error"]
        assert any("retrying in" in r.getMessage() and "'offsite'" in r.getMessage() for r in caplog.records)  # backoff
        kinds = [e.kind for e in rt.catalog.events(backup_id=run.id)]
        assert "storage.upload_failed" in kinds and "chain.failed" in kinds
        # the local copy is intact, committed (manifest) and recorded: it verifies
        assert [l["tier"] for l in info["locations"]] == ["local"]
        from backup_tasks.ops.verify import verify_backup

        assert verify_backup(rt, run.id)["status"] == "verified"

        server.start()  # the endpoint is back: the next run succeeds and leaves no parts behind
        # Still a multipart upload (two 8 MiB parts), without four seconds at the bandwidth limit.
        (tree / "blob").write_bytes(os.urandom(9 * MiB))
        again = client.enqueue_backup("t", rt=rt).wait()
        assert again["status"] == "verified" and [l["tier"] for l in again["locations"]] == ["local", "offsite"]
        assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    finally:
        server.kill()
