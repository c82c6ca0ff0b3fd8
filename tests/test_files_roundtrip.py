"""Runbook: back up a real file tree through the whole chain, restore it elsewhere, compare everything."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import pytest

from backup_tasks import client
from backup_tasks.records.catalog import Status
from conftest import run_cli
from test_files_source import assert_same_tree, snapshot

MiB = 1 << 20


def build_tree(root: Path, big_mib: int = 200) -> None:
    (root / "empty" / "nested-empty").mkdir(parents=True)
    (root / "unicodé ✓ 日本").mkdir()
    (root / "unicodé ✓ 日本" / "файл.txt").write_text("κείμενο\n" * 100)
    (root / "secret.env").write_text("API_TOKEN=not-a-real-token\n")
    (root / "secret.env").chmod(0o600)
    (root / "readonly.txt").write_text("r\n")
    (root / "readonly.txt").chmod(0o400)
    (root / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (root / "run.sh").chmod(0o755)
    os.symlink("unicodé ✓ 日本/файл.txt", root / "link-inside")
    os.symlink("/etc/hostname", root / "link-absolute")
    os.symlink("does-not-exist", root / "link-dangling")
    (root / "skip.tmp").write_text("excluded")
    (root / "node_modules" / "pkg").mkdir(parents=True)
    (root / "node_modules" / "pkg" / "index.js").write_text("excluded")
    block = hashlib.sha256(b"seed").digest() * (MiB // 32)
    with open(root / "big.bin", "wb") as fh:  # half incompressible, half repetitive
        rnd = os.urandom(MiB)
        for i in range(big_mib):
            fh.write(rnd if i % 2 else block)
    os.utime(root / "big.bin", ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))
    os.utime(root / "secret.env", (1_500_000_000.5, 1_500_000_000.5))


@pytest.mark.slow
def test_tree_with_unicode_links_modes_and_a_200mib_file_restores_identical(tmp_path, make_config, runtime_for):
    tree = tmp_path / "srv" / "app"
    tree.mkdir(parents=True)
    build_tree(tree)
    cfg = make_config(f'[targets.uploads]\nkind = "files"\npaths = ["{tree}"]\nexclude = ["*.tmp", "node_modules/"]\n')
    rt = runtime_for(cfg)
    before = {k: v for k, v in snapshot(tree).items() if not (k.endswith(".tmp") or k.startswith("node_modules"))}

    info = client.enqueue_backup("uploads", rt=rt).wait(timeout=600)
    assert info["status"] == Status.VERIFIED
    shown = json.loads(run_cli("show", info["id"], "--files", "--json", config=cfg, check=0).stdout)
    manifest = shown["manifest"]
    assert "files" not in manifest["source"] and manifest["source"]["file_count"] == 5  # the list is the listing object
    listed = {e["path"] for e in shown["files"]}
    assert not any(p.endswith("skip.tmp") or "node_modules" in p for p in listed)
    big = next(e for e in shown["files"] if e["path"].endswith("big.bin"))
    assert big["size"] == 200 * MiB and big["sha256"] == before["big.bin"]["sha256"]
    assert manifest["stored"]["size"] < manifest["plaintext"]["size"]

    dest = tmp_path / "restore"
    result = json.loads(run_cli("restore", info["id"], "--to", str(dest), "--json", config=cfg, check=0).stdout)
    assert result["files"] == 5 and result["links"] == 3
    restored_root = dest / str(tree).lstrip("/")
    after = snapshot(restored_root)
    assert_same_tree(before, after)
    assert after["big.bin"]["mtime"] == 1_600_000_000_123_456_789  # to the nanosecond
    assert stat.S_IMODE((restored_root / "secret.env").stat().st_mode) == 0o600
    assert stat.S_IMODE(dest.stat().st_mode) == 0o700
