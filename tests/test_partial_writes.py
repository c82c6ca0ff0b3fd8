"""Runbook: an upload killed mid-write leaves debris in the tier; cleanup and delete remove it once it is old.

A real upload into the local tier is killed (SIGKILL) while it writes: its
``.data….tmp`` stays in the tier, invisible to ``list``. Days later cleanup finds it,
removes it and reports its size; a temp file of an upload that may still be running
(younger than a day) is left alone. ``delete`` of a backup removes its own old temp files
together with its copies, so its directory in the tier is gone. On S3 the debris is a
multipart upload never completed: delete aborts its backup's own, cleanup all of them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from backup_tasks import client
from backup_tasks.ops.cleanup import run_cleanup
from backup_tasks.ops.delete import delete_backup
from distributed import wait_for
from s3server import s3_tier_toml
from test_sqlite_backup import make_app_db

# Streams 4 MiB into the tier, then stalls like an upload whose worker is about to be killed.
_UPLOAD = """
import sys, time
from backup_tasks.storage.local import LocalStorage

class Stalling:
    sent = 0
    def read(self, n=-1):
        if self.sent >= 4 << 20:
            time.sleep(3600)
        self.sent += 1 << 20
        return b"x" * (1 << 20)

LocalStorage("local", sys.argv[1]).put(sys.argv[2], Stalling())
"""


def killed_upload(root: Path, key: str, *, days_old: float) -> Path:
    """Run a real put of ``key`` in its own process, SIGKILL it mid-write, age its temp file; return that file."""
    proc = subprocess.Popen([sys.executable, "-c", _UPLOAD, str(root), key], env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    directory = root / key.rpartition("/")[0]
    name = key.rpartition("/")[2]

    def written():
        temps = [p for p in directory.glob(f".{name}.*.tmp")] if directory.is_dir() else []
        return temps[0] if temps and temps[0].stat().st_size >= 4 << 20 else None

    try:
        temp = wait_for(written, 30, f"the upload of {key} to be under way")
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    then = time.time() - days_old * 86400
    os.utime(temp, (then, then))
    return temp


def test_temp_files_of_killed_uploads_are_removed_by_cleanup_and_delete(tmp_path, make_config, runtime_for):
    make_app_db(tmp_path / "app.db", rows=50)
    store = tmp_path / "state" / "store"
    rt = runtime_for(make_config(f'[targets.app]\nkind = "sqlite"\npath = "{tmp_path / "app.db"}"\n'))
    older, newer = (client.enqueue_backup("app", rt=rt).wait()["id"] for _ in range(2))

    # A run whose upload was killed three days ago, one killed just now, and a redelivered
    # upload of the older backup killed three days ago.
    stale = killed_upload(store, "app/app-20261201T020000Z-0a0b0c/data.sqlite.zst.age", days_old=3)
    fresh = killed_upload(store, "app/app-20261205T020000Z-0d0e0f/data.sqlite.zst.age", days_old=0)
    of_older = killed_upload(store, f"app/{older}/data.sqlite.zst.age", days_old=3)
    assert [o.key for o in rt.storage("local").list("app/")] == sorted(  # temp files are no objects
        f"app/{b}/{name}" for b in (older, newer) for name in ("data.sqlite.zst.age", "manifest.json", "verified.json"))

    dry = run_cleanup(rt, dry_run=True)
    assert stale.exists() and of_older.exists()  # a dry run only says
    report = run_cleanup(rt)
    assert dry["debris"] == report["debris"]
    partial = sorted((d["key"], d["size"]) for d in report["debris"] if d["kind"] == "partial-write")
    assert partial == sorted([(f"app/{older}/data.sqlite.zst.age", 4 << 20),
                              ("app/app-20261201T020000Z-0a0b0c/data.sqlite.zst.age", 4 << 20)])
    assert not stale.exists() and not stale.parent.exists()  # its run's directory held nothing else
    assert fresh.exists()  # may still be uploading
    assert not of_older.exists()

    of_older = killed_upload(store, f"app/{older}/data.sqlite.zst.age", days_old=2)
    result = delete_backup(rt, older, actor="cli:alice", now=datetime.now(timezone.utc))
    assert [(d["key"], d["size"]) for d in result["debris"]] == [(f"app/{older}/data.sqlite.zst.age", 4 << 20)]
    assert not (store / "app" / older).exists()  # copies, markers and the temp file: nothing left
    assert fresh.exists() and (store / "app" / newer).is_dir()
    assert run_cleanup(rt)["debris"] == []
    # The day after, the one killed "just now" is old enough to go too.
    tomorrow = run_cleanup(rt, now=datetime.now(timezone.utc) + timedelta(days=1, minutes=1))
    assert [d["key"] for d in tomorrow["debris"]] == ["app/app-20261205T020000Z-0d0e0f/data.sqlite.zst.age"]
    assert not fresh.exists()


def test_a_killed_multipart_upload_to_s3_is_aborted_by_delete_and_cleanup(tmp_path, make_config, runtime_for, s3_server,
                                                                          s3_env):
    make_app_db(tmp_path / "app.db", rows=50)
    bucket = s3_server.make_bucket()
    rt = runtime_for(make_config(f'[targets.app]\nkind = "sqlite"\npath = "{tmp_path / "app.db"}"\nstorage = ["offsite"]\n',
                                 tiers=s3_tier_toml(s3_server, bucket)))
    older, newer = (client.enqueue_backup("app", rt=rt).wait()["id"] for _ in range(2))
    s3 = s3_server.client()

    # What a worker killed mid-upload leaves on S3: a multipart upload with a part, never completed.
    def killed_upload(key: str) -> None:
        upload = s3.create_multipart_upload(Bucket=bucket, Key=key)
        s3.upload_part(Bucket=bucket, Key=key, UploadId=upload["UploadId"], PartNumber=1, Body=b"x" * (5 << 20))

    def incomplete() -> list[str]:
        return sorted(u["Key"] for u in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []))

    killed_upload(f"app/{older}/data.sqlite.zst.age")
    killed_upload(f"app/{newer}/data.sqlite.zst.age")
    two_days_on = datetime.now(timezone.utc) + timedelta(days=2)

    result = delete_backup(rt, older, actor="cli:alice", now=two_days_on)
    assert [(d["kind"], d["key"]) for d in result["debris"]] == [("incomplete-upload", f"app/{older}/data.sqlite.zst.age")]
    assert incomplete() == [f"app/{newer}/data.sqlite.zst.age"]  # another backup's upload is not this delete's business
    report = run_cleanup(rt, now=two_days_on)
    assert [d["key"] for d in report["debris"] if d["kind"] == "incomplete-upload"] == [f"app/{newer}/data.sqlite.zst.age"]
    assert incomplete() == []
