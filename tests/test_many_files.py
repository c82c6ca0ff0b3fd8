"""A tree of 100,000 files round-trips (backup, verify, restore, compare) and its signed manifest stays small.

The per-file record is the listing object, read as a stream by verify and restore; the
manifest carries counts only. 100,000 files and not a million: creating a million files
alone takes over half a minute even on tmpfs here, and restore extracts each through
tarfile (benchmarks/listing.py runs the million, with peak memory).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from backup_tasks import client
from backup_tasks.ops import readback
from backup_tasks.ops.restore import restore_backup
from backup_tasks.records.catalog import Status

N = 100_000
PER_DIR = 1000


@pytest.fixture
def fast_dir(tmp_path):
    """tmpfs where there is one: creating a file on this machine's disk costs about 1 ms, on tmpfs 35 µs."""
    shm = Path("/dev/shm")
    base = shm if shm.is_dir() and os.access(shm, os.W_OK) else tmp_path
    folder = Path(tempfile.mkdtemp(prefix="many-files-", dir=base))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def build(root: Path) -> None:
    for i in range(N):
        folder = root / f"d{i // PER_DIR:03d}"
        if i % PER_DIR == 0:
            folder.mkdir(parents=True)
        fd = os.open(folder / f"f{i:06d}", os.O_WRONLY | os.O_CREAT, 0o644)
        if i % 10:  # every tenth file empty
            os.write(fd, b"%d\n" % i)
        os.close(fd)


@pytest.mark.slow
def test_a_hundred_thousand_files_back_up_verify_and_restore_with_a_small_manifest(fast_dir, make_config, runtime_for):
    tree = fast_dir / "srv"
    build(tree)
    cfg = make_config(f'[targets.many]\nkind = "files"\npaths = ["{tree}"]\n', state=fast_dir / "state")
    rt = runtime_for(cfg)

    info = client.enqueue_backup("many", rt=rt).wait(timeout=900)
    assert info["status"] == Status.VERIFIED, info
    found = readback.locate(rt, rt.catalog.get(info["id"]))
    source = found.doc["source"]
    assert "files" not in source and (source["file_count"], source["entry_count"]) == (N, N + N // PER_DIR + 1)
    manifest = fast_dir / "state" / "store" / "many" / info["id"] / "manifest.json"
    assert manifest.stat().st_size < 16 * 1024  # counts, not 100,000 entries (the old form was about 25 MiB)

    dest = fast_dir / "restored"
    result = restore_backup(rt, info["id"], dest)
    assert (result["files"], result["bytes"]) == (N, source["bytes"])
    restored = dest / str(tree).lstrip("/")
    seen = 0
    for dirpath, _, filenames in os.walk(restored):
        for name in filenames:
            i = int(name[1:])
            assert Path(dirpath).name == f"d{i // PER_DIR:03d}"
            assert (Path(dirpath) / name).read_bytes() == (b"%d\n" % i if i % 10 else b""), name
            seen += 1
    assert seen == N
