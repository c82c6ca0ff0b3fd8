"""The external tier on a real mount (tmpfs, mounted by the test as root) and on a
directory whose mount went away: refused, alerted, nothing written."""

from __future__ import annotations

import io
import os
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.register_assert_rewrite("storage_conformance")

from storage_conformance import MiB, GeneratedReader, StorageConformance, pattern_chunks, read_all  # noqa: E402

from backup_tasks.errors import TierUnavailable  # noqa: E402
from backup_tasks.storage import RetryingStorage, open_tier  # noqa: E402
from backup_tasks.records.events import TIER_REFUSED as EVENT_REFUSED  # noqa: E402
from backup_tasks.storage.external import ExternalStorage  # noqa: E402
from backup_tasks.storage.throttle import ThrottledStorage, TokenBucket, parse_rate  # noqa: E402


def mount_tmpfs(path: Path, size: str = "160m") -> None:
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail(f"mount -t tmpfs failed (tests run as root, as in CI): {done.stderr}")


def umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.fixture
def mounted(tmp_path):
    mnt = tmp_path / "usb"
    mount_tmpfs(mnt)
    yield mnt
    umount(mnt)


class Alerts(list):
    def __call__(self, message, remedy, detail):
        self.append((message, remedy, detail))


@pytest.fixture
def storage(mounted):
    return ExternalStorage("usb", mounted, alert=Alerts())


class TestExternalConformance(StorageConformance):
    pass


class TestThrottledConformance(StorageConformance):
    """The bandwidth wrapper keeps the contract (at a rate that does not slow the suite)."""

    @pytest.fixture
    def storage(self, tmp_path):
        from backup_tasks.storage import LocalStorage

        return ThrottledStorage(LocalStorage("local", tmp_path / "t"), 2 * 1024 * MiB)


def test_missing_mount_refuses_writes_alerts_and_writes_nothing(tmp_path):
    path = tmp_path / "usb"
    mount_tmpfs(path)
    umount(path)  # the disk went away: what is left is a plain directory on the root disk
    assert path.is_dir() and not os.path.ismount(path)
    alerts = Alerts()
    tier = ExternalStorage("usb", path, alert=alerts)
    with pytest.raises(TierUnavailable) as caught:
        tier.put("db/b1/data", io.BytesIO(b"x" * 1000))
    assert "not a mount point" in caught.value.message and f"mount {path}" in caught.value.remedy
    assert list(path.iterdir()) == []
    assert len(alerts) == 1 and alerts[0][2]["reason"] == "not-mounted" and alerts[0][2]["tier"] == "usb"
    assert list(tier.list()) == []  # reading a missing mount is simply empty
    staged = tmp_path / "staged.age"
    staged.write_bytes(b"x" * 1000)
    with pytest.raises(TierUnavailable):  # a link is a write like any other: refused the same way
        tier.link_in("db/b1/data", str(staged))
    assert list(path.iterdir()) == [] and len(alerts) == 2


def test_free_space_threshold(mounted):
    alerts = Alerts()
    tier = ExternalStorage("usb", mounted, min_free_bytes=150 * MiB, alert=alerts)  # of a 160 MiB tmpfs
    tier.put("small", io.BytesIO(b"fits"))
    with pytest.raises(TierUnavailable, match="min_free_bytes"):
        tier.put("big", GeneratedReader(pattern_chunks(20 * MiB)), size_hint=20 * MiB)
    assert alerts[-1][2]["reason"] == "low-space"
    assert [i.key for i in tier.list()] == ["small"]


def test_read_only_mount_is_refused(mounted):
    subprocess.run(["mount", "-o", "remount,ro", str(mounted)], check=True)
    alerts = Alerts()
    tier = ExternalStorage("usb", mounted, alert=alerts)
    if os.access(mounted, os.W_OK) and os.geteuid() == 0:
        # root may "write" a read-only mount as far as access() knows; the write itself then fails
        with pytest.raises(Exception):
            tier.put("k", io.BytesIO(b"x"))
    else:
        with pytest.raises(TierUnavailable, match="not writable"):
            tier.put("k", io.BytesIO(b"x"))


def test_configured_external_tier_emits_an_event_in_the_catalog(tmp_path, make_config, runtime_for):
    path = tmp_path / "usb"
    path.mkdir()
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "f").write_text("data")
    cfg = make_config(f'[targets.t]\nkind = "files"\npaths = ["{tree}"]\nstorage = ["local", "usb"]\n',
                      tiers=f'[tiers.local]\nkind = "local"\npath = "{tmp_path / "store"}"\n'
                            f'[tiers.usb]\nkind = "external"\npath = "{path}"\nmin_free_bytes = 1024\n')
    rt = runtime_for(cfg)
    from backup_tasks import client

    run = client.enqueue_backup("t", rt=rt)
    with pytest.raises(client.BackupFailed):
        run.wait()
    kinds = [e.kind for e in rt.catalog.events()]
    assert EVENT_REFUSED in kinds
    refused = rt.catalog.events(kind=EVENT_REFUSED)[0]
    assert refused.detail["tier"] == "usb" and refused.severity == "error"
    assert refused.target == "t" and refused.backup_id == run.id  # the run that was refused, from its key
    assert list(path.iterdir()) == []


def test_bandwidth_limit_slows_uploads_to_the_rate(tmp_path):
    tier = open_tier(SimpleNamespace(name="slow", kind="local", path=str(tmp_path / "s"),
                                     options={"bandwidth_limit": "2MiB"}))
    assert isinstance(tier, RetryingStorage) and isinstance(tier.inner, ThrottledStorage)
    started = time.monotonic()
    tier.put("k", GeneratedReader(pattern_chunks(5 * MiB)))
    elapsed = time.monotonic() - started
    # 5 MiB at 2 MiB/s with a one-second burst: at least (5 - 2) / 2 = 1.5 s
    assert 1.4 <= elapsed < 4, elapsed
    assert read_all(tier, "k")[:8] == (0).to_bytes(8, "big")


def test_token_bucket_rate_and_rate_parsing():
    now = [0.0]
    slept = []

    def sleep(s):
        slept.append(s)
        now[0] += s

    bucket = TokenBucket(1000, clock=lambda: now[0], sleep=sleep)
    for _ in range(10):
        bucket.take(500)
    assert abs(now[0] - 4.0) < 1e-9  # 5000 bytes, 1000 in the burst, 4000 at 1000/s
    assert parse_rate(1024) == 1024 and parse_rate("8MiB") == 8 * MiB and parse_rate("500 kB/s") == 500_000
    from backup_tasks.errors import ConfigError

    for bad in ("fast", 0, -5, True, "3 parsecs"):
        with pytest.raises(ConfigError):
            parse_rate(bad)
