"""The local tier: the shared conformance suite, then what only a directory can get wrong.

Root bypasses file permissions, so "not writable" is provoked in ways that stop root
too: a path running through a regular file, a read-only mount, a full filesystem and
a file size limit.
"""

from __future__ import annotations

import io
import os
import resource
import stat
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.register_assert_rewrite("storage_conformance")

from storage_conformance import (  # noqa: E402
    MiB,
    GeneratedReader,
    StorageConformance,
    breaking_chunks,
    keys,
    pattern_chunks,
    read_all,
    SourceBroke,
)

from backup_tasks.errors import ConfigError, InputError, ObjectNotFound, StorageError  # noqa: E402
from backup_tasks.storage import TIER_KINDS, LocalStorage, RetryingStorage, TierKind, open_tier  # noqa: E402


@pytest.fixture
def storage(tmp_path):
    return LocalStorage("local", tmp_path / "tier")


class TestLocalConformance(StorageConformance):
    pass


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir())


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask():
    """Set a umask for one test and put the old one back."""
    previous = os.umask(0o022)
    yield os.umask
    os.umask(previous)


@pytest.fixture
def tmpfs(tmp_path):
    """Mount a small tmpfs with the given options; unmounted after the test.

    Needs mount privilege (the suite runs as root, as CI does). A full disk and a
    read-only filesystem cannot be faked honestly any other way.
    """
    mounted = []

    def mount(options: str) -> Path:
        point = tmp_path / f"mnt{len(mounted)}"
        point.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            # Never skipped: a full or read-only disk is exactly what must be tested for real.
            pytest.fail(f"cannot mount a tmpfs (the suite runs as root, as CI does): {done.stderr.strip()}")
        mounted.append(point)
        return point

    yield mount
    for point in reversed(mounted):
        subprocess.run(["umount", str(point)], check=True)


# -- modes ----------------------------------------------------------------------------


@pytest.mark.parametrize("mask", [0o000, 0o022, 0o077, 0o277], ids=lambda m: f"umask-{m:03o}")
def test_directories_are_0700_and_files_0600_whatever_the_umask(tmp_path, umask, mask):
    umask(mask)
    root = tmp_path / "missing" / "tier"
    tier = LocalStorage("local", root)
    tier.put("db/2024/dump", io.BytesIO(b"secret"))
    tier.put("db/2024/dump", io.BytesIO(b"secret, again"))  # an overwrite is a new file
    for directory in (tmp_path / "missing", root, root / "db", root / "db/2024"):
        assert mode(directory) == 0o700, directory
    assert mode(root / "db/2024/dump") == 0o600


def test_an_existing_root_keeps_its_mode(tmp_path, umask):
    root = tmp_path / "tier"
    root.mkdir(mode=0o755)
    LocalStorage("local", root).put("x", io.BytesIO(b"x"))
    assert mode(root) == 0o755


def test_construction_touches_nothing(tmp_path):
    tier = LocalStorage("local", tmp_path / "not-yet")
    assert list(tier.list()) == []
    with pytest.raises(ObjectNotFound):
        tier.stat("a")
    tier.delete("a")
    assert not (tmp_path / "not-yet").exists()


def test_relative_root_is_fixed_when_constructed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tier = LocalStorage("local", "backups")
    monkeypatch.chdir("/")
    tier.put("a", io.BytesIO(b"x"))
    assert (tmp_path / "backups" / "a").read_bytes() == b"x"


# -- temp files and debris ------------------------------------------------------------


def test_in_flight_data_is_a_dot_file_beside_the_target(storage):
    halfway, release = threading.Event(), threading.Event()

    def stalled():
        yield b"a" * MiB
        halfway.set()
        assert release.wait(10)

    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(storage.put, "run/artifact", GeneratedReader(stalled()))
        try:
            assert halfway.wait(10)
            in_flight = os.listdir(storage.root / "run")
            assert len(in_flight) == 1 and in_flight[0].startswith(".artifact.")
            assert mode(storage.root / "run" / in_flight[0]) == 0o600
        finally:
            release.set()
        future.result(10)
    assert os.listdir(storage.root / "run") == ["artifact"]


def test_a_broken_source_leaves_no_file_on_disk(storage):
    with pytest.raises(SourceBroke):
        storage.put("run/artifact", GeneratedReader(breaking_chunks(3 * MiB)))
    assert files_under(storage.root) == []


def test_dot_files_and_symlinks_are_not_objects(storage, tmp_path):
    storage.put("d/real", io.BytesIO(b"x"))
    outside = tmp_path / "outside"
    outside.write_bytes(b"not in the tier")
    (storage.root / "d" / "link").symlink_to(outside)
    (storage.root / "d" / ".stray.abc.tmp").write_bytes(b"debris of a crash")
    assert keys(storage.list()) == ["d/real"]
    with pytest.raises(ObjectNotFound):
        storage.stat("d/link")
    with pytest.raises(ObjectNotFound):
        storage.get("d/link")


def test_delete_prunes_directories_it_emptied(storage):
    storage.put("a/b/c/obj", io.BytesIO(b"x"))
    storage.put("a/keep", io.BytesIO(b"x"))
    storage.delete("a/b/c/obj")
    assert sorted(os.listdir(storage.root / "a")) == ["keep"]
    storage.delete("a/keep")
    assert os.listdir(storage.root) == []  # the root itself stays


def test_put_survives_a_delete_pruning_its_directory(storage):
    """A delete that empties a directory removes it; a put racing into it recreates it.

    The window is a few bytecodes wide, so switch threads as often as possible and try
    a few hundred times (it is hit several times per run).
    """
    errors = []
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for i in range(300):
            storage.put(f"r{i}/x/old", io.BytesIO(b"o"))
            start = threading.Barrier(2)

            def put(i=i, start=start):
                start.wait()
                try:
                    storage.put(f"r{i}/x/new", io.BytesIO(b"n"))
                except Exception as exc:  # collected: an exception in a thread is otherwise lost
                    errors.append(exc)

            def delete(i=i, start=start):
                start.wait()
                storage.delete(f"r{i}/x/old")

            threads = [threading.Thread(target=put), threading.Thread(target=delete)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
    finally:
        sys.setswitchinterval(previous)
    assert errors == []
    assert keys(storage.list()) == sorted(f"r{i}/x/new" for i in range(300))


# -- the tier refuses to write ----------------------------------------------------------


def test_root_below_a_regular_file_is_a_storage_error_with_remedy(tmp_path):
    (tmp_path / "file").write_bytes(b"")
    tier = LocalStorage("nightly", tmp_path / "file" / "tier")
    with pytest.raises(StorageError) as caught:
        tier.put("db/dump", io.BytesIO(b"x"))
    err = caught.value
    assert "nightly" in err.message and "'db/dump'" in err.message and "ENOTDIR" in err.message
    assert "regular file" in err.remedy


def test_read_only_root_is_a_storage_error_with_remedy(tmpfs):
    tier = LocalStorage("nightly", tmpfs("ro,size=1m,mode=0700"))
    with pytest.raises(StorageError) as caught:
        tier.put("db/dump", io.BytesIO(b"x"))
    assert "EROFS" in caught.value.message and "'db/dump'" in caught.value.message
    assert "read-only" in caught.value.remedy


def test_full_disk_is_a_storage_error_and_leaves_nothing(tmpfs):
    root = tmpfs("size=1m,mode=0700")
    tier = LocalStorage("nightly", root)
    with pytest.raises(StorageError) as caught:
        tier.put("db/dump", GeneratedReader(pattern_chunks(4 * MiB)))
    assert "ENOSPC" in caught.value.message and "nightly" in caught.value.message
    assert "free space" in caught.value.remedy
    assert files_under(root) == []
    assert list(tier.list()) == []


def test_size_hint_beyond_free_space_is_refused_before_writing(tmpfs):
    root = tmpfs("size=1m,mode=0700")
    tier = LocalStorage("nightly", root)
    with pytest.raises(StorageError) as caught:
        tier.put("db/dump", io.BytesIO(b"small really"), size_hint=10 * MiB)
    assert "free" in caught.value.message and caught.value.remedy
    assert files_under(root) == []


def test_write_error_midway_removes_the_temp_file(storage):
    """A file size limit makes write() fail for root too (EFBIG), with no mount needed."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (2 * MiB, hard))
    try:
        with pytest.raises(StorageError) as caught:
            storage.put("db/dump", GeneratedReader(pattern_chunks(4 * MiB)))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert "EFBIG" in caught.value.message and "'db/dump'" in caught.value.message
    assert "ulimit" in caught.value.remedy
    assert isinstance(caught.value.__cause__, OSError)
    assert files_under(storage.root) == []


def test_text_mode_source_is_refused(storage):
    with pytest.raises(InputError) as caught:
        storage.put("a", io.StringIO("text"))
    assert "binary" in caught.value.remedy
    assert files_under(storage.root) == []


# -- link_in: storing a staged file without copying it ------------------------------------


def test_link_in_replaces_the_object_atomically_with_a_private_link_and_declines_another_filesystem(
        tmp_path, umask, tmpfs):
    umask(0o022)
    tier = LocalStorage("local", tmp_path / "tier")
    tier.put("db/b1/data", io.BytesIO(b"old object"))
    staged = tmp_path / "staged.age"
    staged.write_bytes(b"s" * 5000)
    staged.chmod(0o644)

    info = tier.link_in("db/b1/data", str(staged))
    obj = tmp_path / "tier" / "db" / "b1" / "data"
    assert info.key == "db/b1/data" and info.size == 5000 and info.sha256 is None  # nothing was read
    assert obj.stat().st_ino == staged.stat().st_ino and mode(obj) == 0o600
    assert read_all(tier, "db/b1/data") == b"s" * 5000
    assert files_under(tmp_path / "tier") == ["db/b1/data"]  # no temp link left beside it
    staged.unlink()  # staging is removed after the upload; the object stays
    assert read_all(tier, "db/b1/data") == b"s" * 5000

    far = tmpfs("size=1m") / "staged.age"  # another filesystem: no link, the caller copies
    far.write_bytes(b"f" * 100)
    assert tier.link_in("db/b2/data", str(far)) is None
    assert files_under(tmp_path / "tier") == ["db/b1/data"]


def test_the_link_capability_passes_the_retry_wrapper_but_not_a_bandwidth_limit(tmp_path):
    from backup_tasks.storage.capabilities import LinkIn

    assert isinstance(open_tier(tier_config(path=str(tmp_path / "a"))), LinkIn)
    assert not isinstance(open_tier(tier_config(path=str(tmp_path / "b"), bandwidth_limit="100MiB")), LinkIn)


# -- open_tier ------------------------------------------------------------------------


def tier_config(name="local", kind="local", path=None, **options):
    return SimpleNamespace(name=name, kind=kind, path=path, options=options)


def test_open_tier_gives_a_retrying_local_tier(tmp_path):
    tier = open_tier(tier_config(path=str(tmp_path / "b")))
    assert isinstance(tier, RetryingStorage) and isinstance(tier.inner, LocalStorage)
    assert tier.name == "local"
    tier.put("x/y", io.BytesIO(b"data"))
    assert read_all(tier, "x/y") == b"data"


def load_tiers(tmp_path, tiers: str):
    """The tiers as the configuration checks them: the one place a tier's path is checked."""
    from backup_tasks import config

    (tmp_path / "targets.toml").write_text(tiers)
    return config.load(tmp_path / "targets.toml").tiers


def test_every_designed_tier_kind_is_available(tmp_path):
    # the external and s3 kinds are tested on their own (tests: test_storage_external.py, test_storage_s3.py)
    assert set(TIER_KINDS) >= {"local", "external", "s3"}
    with pytest.raises(ConfigError, match="needs a path"):
        load_tiers(tmp_path, '[tiers.usb]\nkind = "external"\n')


def test_unknown_tier_kind_is_a_config_error():
    with pytest.raises(ConfigError) as caught:
        open_tier(tier_config(kind="ftp"))
    assert "ftp" in caught.value.message and "local" in caught.value.remedy


def test_local_tier_without_path_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError) as caught:
        load_tiers(tmp_path, '[tiers.local]\nkind = "local"\npath = ""\n')
    assert caught.value.field == "path"


def test_a_new_tier_kind_plugs_into_the_registry(tmp_path, monkeypatch):
    monkeypatch.setitem(TIER_KINDS, "elsewhere", TierKind(open=lambda t: LocalStorage(t.name, t.options["dir"])))
    tier = open_tier(tier_config(name="other", kind="elsewhere", dir=tmp_path / "o"))
    tier.put("k", io.BytesIO(b"v"))
    assert read_all(tier, "k") == b"v"
