"""Backups stored before the per-file list left the manifest still rebuild, verify, list and restore.

The fixture (tests/fixtures/old_form_listing, written by make.py there with the code of
that day) is a full and an incremental of a small tree, encrypted and signed, whose
manifests carry the archive's file list in ``source.files`` beside a tree listing
object. Nothing here writes that form: the bytes are the ones the old code stored.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import run_cli
from fixtures.old_form_listing.make import snapshot as tree_of  # the shape the fixture's snapshots were taken in

FIXTURE = Path(__file__).parent / "fixtures" / "old_form_listing"
POINTS = json.loads((FIXTURE / "snapshots.json").read_text())


@pytest.fixture
def old_store(tmp_path) -> Path:
    """The fixture's tier and keys copied where a host would hold them (keys 0600 in a 0700 directory)."""
    keys = tmp_path / "keys"
    shutil.copytree(FIXTURE / "keys", keys)
    keys.chmod(0o700)
    for key in keys.iterdir():
        key.chmod(0o600)
    shutil.copytree(FIXTURE / "store", tmp_path / "store")
    state = tmp_path / "state"
    cfg = tmp_path / "targets.toml"
    cfg.write_text(
        "[settings]\n"
        f'staging_dir = "{state / "staging"}"\n'
        f'catalog_url = "sqlite:///{state / "catalog.db"}"\n'
        f'recipients_file = "{keys / "age-recipient.txt"}"\n'
        f'identities_file = "{keys / "age-identity.txt"}"\n'
        f'signing_key_file = "{keys / "signing.key"}"\n\n'
        f'[tiers.local]\nkind = "local"\npath = "{tmp_path / "store"}"\n\n'
        f'[targets.oldfiles]\nkind = "files"\npaths = ["{POINTS["tree"]}"]\n'
    )
    return cfg


def cli(*args: str, config: Path) -> dict:
    return json.loads(run_cli(*args, "--json", config=config, check=0).stdout)


def test_an_old_form_full_and_incremental_rebuild_verify_list_and_restore(old_store, tmp_path):
    cfg = old_store
    full, inc = POINTS["full"], POINTS["incremental"]
    rebuilt = cli("catalog", "rebuild", config=cfg)
    assert rebuilt["skipped"] == [] and {full, inc} <= {b["id"] for b in cli("list", config=cfg)}

    for backup_id in (full, inc):
        result = cli("verify", backup_id, config=cfg)
        assert result["ok"] is True and result["listing_entries"] > 0, result

    shown = cli("show", full, "--files", config=cfg)
    assert "files" in shown["manifest"]["source"]  # the old form, as stored
    prefix = POINTS["tree"].lstrip("/")
    listed = {e["path"].removeprefix(prefix + "/"): e for e in shown["files"] if e["path"] != prefix}
    assert sorted(listed) == sorted(POINTS["points"][full])
    assert listed["docs/note-0.txt"]["sha256"] == POINTS["points"][full]["docs/note-0.txt"]["sha256"]

    # The full restores whole (archive compared with the manifest's list), and stripped.
    whole = tmp_path / "whole"
    cli("restore", full, "--to", str(whole), config=cfg)
    assert tree_of(whole / prefix) == POINTS["points"][full]
    stripped = tmp_path / "stripped"
    cli("restore", full, "--to", str(stripped), "--strip-source-path", config=cfg)
    assert tree_of(stripped) == POINTS["points"][full]
    # The incremental restores from its listing and its chain.
    chained = tmp_path / "chained"
    result = cli("restore", inc, "--to", str(chained), config=cfg)
    assert result["chain"] == [full]
    assert tree_of(chained / prefix) == POINTS["points"][inc]

