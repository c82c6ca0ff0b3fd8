"""Runbook: restores into awkward destinations — what a tired operator types, and what an attacker plants.

A forced restore over a tree where a directory became a symlink or a file, a SQLite
restore "into" a directory that does not exist yet, and a files restore that should
land without its original absolute path.
"""

from __future__ import annotations

import json
import os
import sqlite3

from backup_tasks import client
from backup_tasks.records.catalog import Status
from conftest import run_cli
from test_sqlite_backup import make_app_db


def small_tree(root):
    (root / "conf").mkdir(parents=True)
    (root / "conf" / "app.ini").write_text("[app]\nname = shop\n")
    (root / "data").mkdir()
    (root / "data" / "orders.csv").write_text("1,apples\n2,pears\n")
    (root / "top.txt").write_text("top\n")


def backed_up_tree(tmp_path, make_config, runtime_for):
    tree = tmp_path / "srv" / "app"
    small_tree(tree)
    cfg = make_config(f'[targets.uploads]\nkind = "files"\npaths = ["{tree}"]\n')
    rt = runtime_for(cfg)
    info = client.enqueue_backup("uploads", rt=rt).wait(timeout=120)
    assert info["status"] == Status.VERIFIED
    return tree, cfg, info["id"]


def test_forced_restore_replaces_a_symlink_or_file_standing_where_the_backup_has_a_directory(tmp_path, make_config, runtime_for):
    tree, cfg, backup_id = backed_up_tree(tmp_path, make_config, runtime_for)
    dest = tmp_path / "restore"
    run_cli("restore", backup_id, "--to", str(dest), "--json", config=cfg, check=0)
    restored = dest / str(tree).lstrip("/")

    # Someone replaced conf/ with a link to a directory outside, and data/ with a plain file.
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("not ours\n")
    (restored / "conf" / "app.ini").unlink()
    (restored / "conf").rmdir()
    (restored / "conf").symlink_to(outside)
    (restored / "data" / "orders.csv").unlink()
    (restored / "data").rmdir()
    (restored / "data").write_text("a file where a directory was\n")

    done = run_cli("restore", backup_id, "--to", str(dest), "--force", "--json", config=cfg)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "bug" not in done.stdout + done.stderr
    assert not (restored / "conf").is_symlink() and (restored / "conf" / "app.ini").read_text() == "[app]\nname = shop\n"
    assert (restored / "data").is_dir() and (restored / "data" / "orders.csv").read_text() == "1,apples\n2,pears\n"
    # Nothing was written through the link: the directory it pointed to is as it was.
    assert sorted(p.name for p in outside.iterdir()) == ["keep.txt"]
    assert (outside / "keep.txt").read_text() == "not ours\n"


def test_sqlite_restore_to_a_path_with_a_trailing_slash_lands_inside_it_under_the_original_name(tmp_path, make_config, runtime_for):
    db = tmp_path / "app.db"
    make_app_db(db, rows=50)
    cfg = make_config(f'[targets.app-sqlite]\nkind = "sqlite"\npath = "{db}"\n')
    info = client.enqueue_backup("app-sqlite", rt=runtime_for(cfg)).wait(timeout=120)

    newdir = tmp_path / "newdir"
    done = json.loads(run_cli("restore", info["id"], "--to", f"{newdir}/", "--json", config=cfg, check=0).stdout)
    assert newdir.is_dir() and done["restored_to"] == str(newdir / "app.db")
    assert sqlite3.connect(newdir / "app.db").execute("SELECT count(*) FROM orders").fetchone()[0] == 50

    existing = tmp_path / "existing"
    existing.mkdir()
    done = json.loads(run_cli("restore", info["id"], "--to", str(existing), "--json", config=cfg, check=0).stdout)
    assert done["restored_to"] == str(existing / "app.db") and (existing / "app.db").is_file()


def test_files_restore_keeps_the_source_path_unless_asked_to_strip_it(tmp_path, make_config, runtime_for):
    tree, cfg, backup_id = backed_up_tree(tmp_path, make_config, runtime_for)

    nested = tmp_path / "nested"
    plain = json.loads(run_cli("restore", backup_id, "--to", str(nested), "--json", config=cfg, check=0).stdout)
    assert (nested / str(tree).lstrip("/") / "conf" / "app.ini").is_file()
    assert "strip_source_path" not in plain  # the JSON of a plain restore is as it was

    flat = tmp_path / "flat"
    dry = json.loads(run_cli("restore", backup_id, "--to", str(flat), "--strip-source-path", "--dry-run", "--json",
                             config=cfg, check=0).stdout)
    assert str(flat / "conf" / "app.ini") in dry["would_write"] and not flat.exists()
    done = json.loads(run_cli("restore", backup_id, "--to", str(flat), "--strip-source-path", "--json", config=cfg, check=0).stdout)
    assert done["strip_source_path"] == str(tree)
    assert sorted(os.listdir(flat)) == ["conf", "data", "top.txt"]
    assert (flat / "conf" / "app.ini").read_text() == "[app]\nname = shop\n"
    assert (flat / "data" / "orders.csv").read_text() == "1,apples\n2,pears\n"

    db = tmp_path / "app.db"
    make_app_db(db, rows=5)
    cfg2 = make_config(f'[targets.uploads]\nkind = "files"\npaths = ["{tree}"]\n[targets.app-sqlite]\nkind = "sqlite"\npath = "{db}"\n')
    sqlite_id = client.enqueue_backup("app-sqlite", rt=runtime_for(cfg2)).wait(timeout=120)["id"]
    refused = run_cli("restore", sqlite_id, "--to", str(tmp_path / "x.db"), "--strip-source-path", "--json", config=cfg2, check=2)
    assert "--strip-source-path" in json.loads(refused.stdout)["error"]["message"]
