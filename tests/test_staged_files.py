"""Runbook: every staged file is sealed, its reader checks the seal, and a local tier links instead of copying.

The stages are run one by one, as the embedded default runs them, so the test can look
at (and break) the staged files between two stages: each is sealed with its size and
sha256 by the stage that wrote it, and the next stage hashes what it reads against that
seal; a local tier on the staging filesystem takes the stored object by hard link
(private, in place, restorable), except behind a bandwidth limit, which every byte must
pass. A staged file changed behind the chain's back fails the run, naming the stage that
caught it; a linked one is caught by verify's read-back.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import pytest
from celery import states

from backup_tasks.errors import VerificationFailed
from backup_tasks.ops import backup, verify
from backup_tasks.orchestration import tasks
from backup_tasks.records.catalog import Status
from backup_tasks.storage.capabilities import LinkIn
from conftest import run_cli
from test_files_source import assert_same_tree, snapshot


def _tree(tmp_path: Path) -> Path:
    tree = tmp_path / "data"
    (tree / "sub").mkdir(parents=True)
    (tree / "notes.txt").write_text("a line of notes\n" * 5000)
    (tree / "sub" / "random.bin").write_bytes(os.urandom(3 << 20))
    (tree / "sub" / "secret.env").write_text("TOKEN=not-a-real-one\n")
    return tree


def _config(tmp_path: Path, make_config, tree: Path, bandwidth: str | None = None) -> Path:
    store = tmp_path / "state" / "store"
    limit = f'bandwidth_limit = "{bandwidth}"\n' if bandwidth else ""
    return make_config(f'[targets.docs]\nkind = "files"\nhost = "hostA"\npaths = ["{tree}"]\n',
                       tiers=f'[tiers.local]\nkind = "local"\npath = "{store}"\n{limit}')


def _up_to_encrypt(rt, backup_id: str) -> tuple[dict, dict]:
    ref = backup.start(rt, backup_id, "docs", "full")
    dumped = backup.dump(rt, ref)
    compressed = backup.compress(rt, dumped)
    return dumped, compressed


@pytest.mark.parametrize("bandwidth", [None, "1GiB"], ids=["same-filesystem", "bandwidth-limit"])
def test_the_stored_object_is_linked_from_staging_unless_a_bandwidth_limit_must_see_it(
        tmp_path, make_config, runtime_for, bandwidth):
    tree = _tree(tmp_path)
    cfg = _config(tmp_path, make_config, tree, bandwidth)
    rt = runtime_for(cfg)
    assert isinstance(rt.storage("local"), LinkIn) is (bandwidth is None)  # the throttle withholds the link

    backup_id = f"docs-linked-{'copy' if bandwidth else 'link'}"
    dumped, compressed = _up_to_encrypt(rt, backup_id)
    assert len(dumped["sha256"]) == 64  # the plaintext is sealed: verify compares against it
    assert len(compressed["sha256"]) == 64 and compressed["size"] > 0  # sealed, for encrypt to check what it reads
    encrypted = backup.encrypt(rt, compressed)
    assert len(encrypted["sha256"]) == 64  # the stored object is sealed once, while it is written
    staged_inode = os.stat(encrypted["path"]).st_ino
    uploaded = backup.upload(rt, encrypted)

    stored = tmp_path / "state" / "store" / "docs" / backup_id / "data.tar.zst.age"
    st = stored.stat()
    assert (st.st_ino == staged_inode) is (bandwidth is None)  # linked, or copied through the limit
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_nlink == 1  # private, and staging let go of it
    assert st.st_size == encrypted["size"] == uploaded["size"]
    assert not [p for p in stored.parent.iterdir() if p.name.startswith(".")]  # no temp link left behind
    assert not (tmp_path / "state" / "staging" / backup_id).exists()
    doc = json.loads((stored.parent / "manifest.json").read_text())
    assert doc["stored"]["sha256"] == encrypted["sha256"] and doc["plaintext"]["sha256"] == dumped["sha256"]

    assert verify.verify_backup(rt, backup_id)["status"] == "verified"  # read back from the tier against both seals
    dest = tmp_path / "restored"
    run_cli("restore", backup_id, "--to", str(dest), "--json", config=cfg, check=0)
    assert_same_tree(snapshot(tree), snapshot(dest / str(tree).lstrip("/")))


@pytest.mark.parametrize("damage", ["altered", "truncated"])
@pytest.mark.parametrize("reader", ["compress", "encrypt"])
def test_a_staged_file_changed_before_the_next_stage_reads_it_fails_the_run_naming_the_stage(tmp_path, make_config,
                                                                                           runtime_for, reader, damage):
    # compress reads its frames straight into its buffers (readinto), encrypt through read(): both check the seal
    tree = _tree(tmp_path)
    rt = runtime_for(_config(tmp_path, make_config, tree))
    backup_id = f"docs-{damage}-{reader}"
    dumped, compressed = _up_to_encrypt(rt, backup_id) if reader == "encrypt" else (
        backup.dump(rt, backup.start(rt, backup_id, "docs", "full")), None)
    staged, producer = (compressed, "compress") if reader == "encrypt" else (dumped, "dump")
    if damage == "altered":  # same length, other bytes (what a host crash can leave on some filesystems)
        with open(staged["path"], "r+b") as fh:
            fh.seek(staged["size"] // 2)
            fh.write(b"\0" * 4096)
    else:
        os.truncate(staged["path"], staged["size"] - 100)

    result = getattr(tasks, reader).apply(args=(staged,))
    assert result.state == states.FAILURE
    row = rt.catalog.get(backup_id)
    assert row.status == Status.FAILED
    assert row.error.startswith(f"{reader} failed: {reader}: the staged file {staged['name']}")
    assert f"the {producer} stage sealed it at {staged['size']} bytes with sha256 {staged['sha256'][:16]}" in row.error
    assert not list(rt.storage("local").list(f"docs/{backup_id}/"))  # nothing stored
    assert not (tmp_path / "state" / "staging" / backup_id).exists()  # no sealed output of the reader either


def test_an_encrypted_file_altered_before_upload_is_refused_by_the_copy_and_by_verify_after_a_link(
        tmp_path, make_config, runtime_for):
    tree = _tree(tmp_path)

    # Copied (a bandwidth limit): upload hashes what it reads against encrypt's seal, and the copy is dropped.
    rt = runtime_for(_config(tmp_path, make_config, tree, bandwidth="1GiB"))
    _, compressed = _up_to_encrypt(rt, "docs-altered-copy")
    encrypted = backup.encrypt(rt, compressed)
    with open(encrypted["path"], "r+b") as fh:
        fh.seek(encrypted["size"] - 20)
        fh.write(b"\xff" * 10)
    assert tasks.upload.apply(args=(encrypted,)).state == states.FAILURE
    row = rt.catalog.get("docs-altered-copy")
    assert row.status == Status.FAILED and row.error.startswith("upload failed: upload: the staged file data.tar.zst.age")
    assert f"the encrypt stage sealed it at {encrypted['size']} bytes with sha256 {encrypted['sha256'][:16]}" in row.error
    assert not list(rt.storage("local").list("docs/docs-altered-copy/"))  # the bad copy was removed, no manifest

    # Linked (nothing read on the way): verify reads it back against the seal in the manifest.
    rt = runtime_for(_config(tmp_path, make_config, tree))
    _, compressed = _up_to_encrypt(rt, "docs-altered-link")
    encrypted = backup.encrypt(rt, compressed)
    with open(encrypted["path"], "r+b") as fh:
        fh.seek(encrypted["size"] - 20)
        fh.write(b"\xff" * 10)
    backup.upload(rt, encrypted)
    with pytest.raises(VerificationFailed) as caught:
        verify.verify_backup(rt, "docs-altered-link")
    assert caught.value.check == "stored-sha256"
    assert f"does not match the signed manifest's {encrypted['sha256'][:16]}" in caught.value.message


def test_two_tiers_on_the_staging_filesystem_hold_two_copies_not_one_file(tmp_path, make_config, runtime_for):
    tree = _tree(tmp_path)
    state = tmp_path / "state"
    rt = runtime_for(make_config(
        f'[targets.docs]\nkind = "files"\nhost = "hostA"\npaths = ["{tree}"]\nstorage = ["near", "second"]\n',
        tiers=f'[tiers.near]\nkind = "local"\npath = "{state / "near"}"\n'
              f'[tiers.second]\nkind = "local"\npath = "{state / "second"}"\n'))
    _, compressed = _up_to_encrypt(rt, "docs-two-tiers")
    encrypted = backup.encrypt(rt, compressed)
    staged_inode = os.stat(encrypted["path"]).st_ino
    backup.upload(rt, encrypted)

    near, second = (state / tier / "docs" / "docs-two-tiers" / "data.tar.zst.age" for tier in ("near", "second"))
    assert near.stat().st_ino == staged_inode  # the first tier took the link ...
    assert second.stat().st_ino != staged_inode  # ... the second a copy of its own
    assert near.read_bytes() == second.read_bytes()
    assert {stat.S_IMODE(p.stat().st_mode) for p in (near, second)} == {0o600}
    assert verify.verify_backup(rt, "docs-two-tiers")["status"] == "verified"  # both copies read back
    with open(near, "r+b") as fh:  # damage to one copy stays in that copy
        fh.write(b"\0" * 64)
    assert hashlib.sha256(second.read_bytes()).hexdigest() == encrypted["sha256"] != hashlib.sha256(near.read_bytes()).hexdigest()
