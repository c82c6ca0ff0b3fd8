"""Runbook: a files target backed up full → incremental → incremental → differential, every point restored.

A real tree changes between backups (content edits, deletions, a rename, a chmod, new
files, a new symlink, a removed directory). Each point is restored into an empty
directory and compared with a snapshot taken when it was backed up: paths, sha256,
modes, mtimes to the nanosecond, symlinks, empty directories, and what was deleted.
Then a parent is removed behind the system's back: the restore refuses before writing,
naming it, and verify fails.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from backup_tasks.errors import VerificationFailed
from backup_tasks.records.catalog import Status
from backup_tasks.sources.files.tree_listing import read_listing
from conftest import run_cli
from test_files_source import assert_same_tree, restored_root, snapshot


def build(root: Path) -> None:
    (root / "docs").mkdir(parents=True)
    (root / "empty" / "deeper").mkdir(parents=True)
    (root / "photos").mkdir()
    for i in range(12):
        (root / "docs" / f"note-{i:02}.txt").write_text(f"note {i}\n" * (50 + i))
    (root / "photos" / "big.bin").write_bytes(os.urandom(1 << 20))
    (root / "to-delete.txt").write_text("soon gone\n")
    (root / "to-rename.bin").write_bytes(os.urandom(200_000))
    (root / "chmod-me.sh").write_text("#!/bin/sh\n")
    (root / "chmod-me.sh").chmod(0o644)
    (root / "old-dir").mkdir()
    (root / "old-dir" / "inside.txt").write_text("in a directory that goes away\n")
    os.symlink("docs/note-00.txt", root / "link-to-note")
    os.utime(root / "docs" / "note-03.txt", ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))


def change_1(root: Path) -> None:
    (root / "docs" / "note-01.txt").write_text("edited after the full\n")
    (root / "to-delete.txt").unlink()
    os.rename(root / "to-rename.bin", root / "photos" / "renamed.bin")
    (root / "chmod-me.sh").chmod(0o755)
    (root / "new-file.txt").write_text("born after the full\n")
    os.symlink("/etc/hostname", root / "new-link")


def change_2(root: Path) -> None:
    (root / "docs" / "note-02.txt").write_text("edited after the first incremental\n")
    shutil.rmtree(root / "old-dir")
    (root / "docs" / "note-01.txt").write_text("edited twice\n")
    (root / "empty" / "deeper").chmod(0o750)


def change_3(root: Path) -> None:
    (root / "new-file.txt").unlink()
    (root / "photos" / "added.bin").write_bytes(os.urandom(50_000))


def backup(cfg: Path, type_: str) -> dict:
    out = run_cli("backup", "files", "--type", type_, "--wait", "--json", config=cfg, check=0).stdout
    return json.loads(out)


def listing_of(rt, info: dict, tmp_path: Path) -> list[dict]:
    from backup_tasks.ops import listing_store, readback

    found = readback.locate(rt, rt.catalog.get(info["id"]))
    return list(read_listing(listing_store.fetch_listing(rt, found.doc, found.tier, tmp_path / f"{info['id']}.jsonl.zst")))


def check_holders(rt, inc: dict, listing: dict[str, dict], tmp_path: Path) -> None:
    """Verify read the whole listing once, and refuses one that names a holder outside the chain.

    The archive's check reads the listing for the members and notes every other holder;
    the chain check proves those without a second read, or reads the listing itself when
    no such note is at hand (re-encryption). Either way a stranger fails it.
    """
    from backup_tasks.ops import chain, readback
    from backup_tasks.sources.base import source_for
    from backup_tasks.sources.files.listing import ListingTally
    from backup_tasks.sources.files.tree_listing import ListingWriter

    detail = inc["verification"]["detail"]
    assert (detail["listing_entries"], detail["listing_files_here"], detail["parents_checked"]) == (
        len(listing), 2, [inc["parent"]])
    found = readback.locate(rt, rt.catalog.get(inc["id"]))
    stranger = tmp_path / "stranger.jsonl.zst"
    writer = ListingWriter(stranger)
    for entry in listing.values():
        writer.write({**entry, "in": "files-stranger"} if entry.get("in") == inc["parent"] else entry)
    writer.close()
    tally = ListingTally()
    with readback.plaintext(rt, found) as (stream, _, _):  # the archive matches: the stranger holds no member
        source_for("files").check(stream, found.doc, tmp_path, listing=stranger, tally=tally)
    assert tally.complete and list(tally.holders) == ["files-stranger"]
    for noted in (tally, None):
        with pytest.raises(VerificationFailed) as err:
            chain.check_listing(rt, found, stranger, noted)
        assert err.value.check == "listing" and "files-stranger" in err.value.message


def test_full_incrementals_and_differential_each_restore_exactly_their_tree(tmp_path, make_config, runtime_for):
    tree = tmp_path / "srv" / "app"
    build(tree)
    cfg = make_config(f'[targets.files]\nkind = "files"\npaths = ["{tree}"]\n')
    rt = runtime_for(cfg)

    # With no verified backup yet, an incremental runs as a full and says why.
    full = backup(cfg, "incremental")
    assert full["status"] == Status.VERIFIED and full["type"] == "full" and full["parent"] is None
    assert "ran as a full backup" in full["note"]
    points = {full["id"]: snapshot(tree)}

    change_1(tree)
    inc1 = backup(cfg, "incremental")
    assert inc1["status"] == Status.VERIFIED and (inc1["type"], inc1["parent"]) == ("incremental", full["id"])
    points[inc1["id"]] = snapshot(tree)
    # The artifact holds only new and changed content: one edited file and one new one.
    shown = json.loads(run_cli("show", inc1["id"], "--files", "--json", config=cfg, check=0).stdout)
    doc = shown["manifest"]
    prefix = str(tree).lstrip("/")
    assert sorted(e["path"] for e in shown["files"] if e.get("in") == inc1["id"]) == [
        f"{prefix}/docs/note-01.txt", f"{prefix}/new-file.txt"]
    assert "files" not in doc["source"] and doc["source"]["file_count"] == 2  # counts only: the listing is the record
    # metadata: the chmod, and the two directories whose entries changed (their mtime moved)
    assert doc["source"]["changes"] == {"new": 2, "modified": 1, "metadata": 3, "renamed": 1, "unchanged": 18,
                                        "deleted": 2}
    assert doc["type"] == "incremental" and doc["parent"] == full["id"] and doc["listing"]["encrypted"] is True
    listing = {e["path"]: e for e in listing_of(rt, inc1, tmp_path)}
    renamed = listing[f"{prefix}/photos/renamed.bin"]
    assert (renamed["change"], renamed["in"], renamed["member"]) == ("renamed", full["id"], f"{prefix}/to-rename.bin")
    chmodded = listing[f"{prefix}/chmod-me.sh"]
    assert (chmodded["change"], chmodded["in"], chmodded["mode"]) == ("metadata", full["id"], 0o755)
    assert f"{prefix}/to-delete.txt" not in listing
    check_holders(rt, inc1, listing, tmp_path)

    change_2(tree)
    inc2 = backup(cfg, "incremental")
    assert (inc2["type"], inc2["parent"]) == ("incremental", inc1["id"])
    points[inc2["id"]] = snapshot(tree)

    change_3(tree)
    diff = backup(cfg, "differential")
    assert (diff["type"], diff["parent"]) == ("differential", full["id"])
    points[diff["id"]] = snapshot(tree)
    shown = json.loads(run_cli("show", diff["id"], "--files", "--json", config=cfg, check=0).stdout)
    # Everything changed since the full, not since the last incremental.
    assert sorted(e["path"].removeprefix(prefix) for e in shown["files"] if e.get("in") == diff["id"]) == [
        "/docs/note-01.txt", "/docs/note-02.txt", "/photos/added.bin"]

    listed = json.loads(run_cli("list", "--target", "files", "--json", config=cfg, check=0).stdout)
    assert [(e["type"], e["parent"]) for e in reversed(listed)] == [
        ("full", None), ("incremental", full["id"]), ("incremental", inc1["id"]), ("differential", full["id"])]

    # Every point restores to exactly the tree it saw.
    for backup_id, expected in points.items():
        dest = tmp_path / f"restore-{backup_id}"
        result = json.loads(run_cli("restore", backup_id, "--to", str(dest), "--json", config=cfg, check=0).stdout)
        assert result["restored_to"] == str(dest)
        assert_same_tree(expected, snapshot(restored_root(dest, tree)))

    # A dry run says which backup each file comes from, and writes nothing.
    dest = tmp_path / "dry"
    plan = json.loads(run_cli("restore", inc2["id"], "--to", str(dest), "--dry-run", "--json", config=cfg, check=0).stdout)
    assert not dest.exists() and plan["dry_run"] is True and plan["chain"] == [inc1["id"], full["id"]]
    origin = {f["path"].removeprefix(prefix): f["from"] for f in plan["files_from"]}
    assert origin["/docs/note-01.txt"] == origin["/docs/note-02.txt"] == inc2["id"]
    assert origin["/new-file.txt"] == inc1["id"] and origin["/photos/renamed.bin"] == full["id"]
    assert {s["backup_id"]: s["files"] for s in plan["from_backups"]} == {full["id"]: 13, inc1["id"]: 1, inc2["id"]: 2}

    # Selective restore through the chain: one directory, as it was at the first incremental.
    dest = tmp_path / "some"
    run_cli("restore", inc1["id"], "--to", str(dest), "--path", str(tree / "photos"), "--json", config=cfg, check=0)
    got = snapshot(restored_root(dest, tree))
    want = {k: v for k, v in points[inc1["id"]].items() if k == "photos" or k.startswith("photos/")}
    assert_same_tree(want, got)

    # A parent removed behind our back: restore refuses before writing, naming it; verify fails.
    store = tmp_path / "state" / "store"
    for obj in (store / "files" / inc1["id"]).glob("data.*"):
        obj.unlink()
    dest = tmp_path / "broken"
    refused = run_cli("restore", inc2["id"], "--to", str(dest), "--json", config=cfg)
    assert refused.returncode == 1 and inc1["id"] in refused.stdout + refused.stderr
    assert not dest.exists() and not list(tmp_path.glob(".broken.restoring-*"))
    failed = run_cli("verify", inc2["id"], "--json", config=cfg)
    assert failed.returncode == 1 and json.loads(failed.stdout)["check"] == "chain"
    assert inc1["id"] in json.loads(failed.stdout)["message"]
    # The differential does not depend on the lost incremental: it still restores.
    dest = tmp_path / "diff-again"
    run_cli("restore", diff["id"], "--to", str(dest), "--json", config=cfg, check=0)
    assert_same_tree(points[diff["id"]], snapshot(restored_root(dest, tree)))
    # Without its listing a backup is not restorable, and verify says so.
    (store / "files" / diff["id"] / "listing.jsonl.zst.age").unlink()
    failed = run_cli("verify", diff["id"], "--json", config=cfg)
    assert failed.returncode == 1 and json.loads(failed.stdout)["check"] == "listing"


def test_database_targets_refuse_incrementals_and_point_to_point_in_time_recovery(tmp_path, make_config):
    cfg = make_config(f'[targets.app-sqlite]\nkind = "sqlite"\npath = "{tmp_path / "app.db"}"\n')
    for type_ in ("incremental", "differential"):
        done = run_cli("backup", "app-sqlite", "--type", type_, "--json", config=cfg)
        assert done.returncode == 2
        assert "point-in-time recovery" in done.stdout + done.stderr


def test_incremental_and_differential_schedules_become_beat_entries_beside_the_full(tmp_path, session_keys):
    import beat_schedule
    from backup_tasks import config
    from backup_tasks.errors import ConfigError
    from conftest import write_config

    targets = ('[targets.uploads]\nkind = "files"\nhost = "app01"\npaths = ["/srv/uploads"]\nschedule = "0 3 * * 0"\n'
               'incremental_schedule = "0 3 * * 1-6"\n'
               '[targets.app-config]\nkind = "config"\nhost = "app01"\npaths = ["/srv/app/.env"]\n'
               'differential_schedule = "0 1 * * 1-5"\n')
    entries = beat_schedule.build(config.load(write_config(tmp_path / "t.toml", session_keys, targets=targets), environ={}))
    inc, full = entries["backup:uploads:incremental"], entries["backup:uploads"]
    assert inc["args"] == ("uploads", "incremental") and full["args"] == ("uploads", "full")
    assert inc["schedule"].day_of_week == {1, 2, 3, 4, 5, 6} and full["schedule"].day_of_week == {0}
    assert inc["options"] == {"queue": "host.app01"}
    assert entries["backup:app-config:differential"]["args"] == ("app-config", "differential")
    assert "backup:app-config:incremental" not in entries and "backup:uploads:differential" not in entries

    for bad, field in (('[targets.db]\nkind = "sqlite"\npath = "/srv/db.sqlite"\nincremental_schedule = "0 3 * * *"\n',
                        "incremental_schedule"),
                       ('[targets.u]\nkind = "files"\npaths = ["/srv"]\nincremental_schedule = "0 3 * * *"\n'
                        'differential_schedule = "0 4 * * *"\n', "differential_schedule"),
                       ('[targets.u]\nkind = "files"\npaths = ["/srv"]\nincremental_schedule = "every day"\n',
                        "incremental_schedule")):
        with pytest.raises(ConfigError) as err:
            config.load(write_config(tmp_path / "bad.toml", session_keys, targets=bad), environ={})
        assert err.value.field == field


def test_config_chain_is_encrypted_kept_whole_by_retention_and_relinked_by_catalog_rebuild(tmp_path, make_config):
    etc = tmp_path / "etc" / "app"
    etc.mkdir(parents=True)
    (etc / ".env").write_text("DB_PASSWORD=first\n")
    (etc / ".env").chmod(0o600)
    (etc / "app.conf").write_text("listen = 8080\n")
    (etc / "gone.conf").write_text("removed later\n")
    cfg = make_config(f'[targets.files]\nkind = "config"\npaths = ["{etc}"]\nretention = {{ keep_last = 1 }}\n')
    full = backup(cfg, "full")
    (etc / ".env").write_text("DB_PASSWORD=second\n")
    (etc / "gone.conf").unlink()
    inc1 = backup(cfg, "incremental")
    (etc / "app.conf").write_text("listen = 9090\n")
    inc2 = backup(cfg, "incremental")
    assert (inc2["type"], inc2["parent"]) == ("incremental", inc1["id"])
    expected = snapshot(etc)

    # Encrypted like its fulls: the artifact and the listing are age files, no name of the tree shows.
    folder = tmp_path / "state" / "store" / "files" / inc2["id"]
    stored = sorted(p.name for p in folder.iterdir())
    assert stored == ["data.tar.zst.age", "listing.jsonl.zst.age", "manifest.json", "verified.json"]
    for name in ("data.tar.zst.age", "listing.jsonl.zst.age"):
        body = (folder / name).read_bytes()
        assert body.startswith(b"age-encryption.org/v1") and b"app.conf" not in body

    # keep_last = 1 keeps the newest incremental, and so every backup it is built on.
    plan = json.loads(run_cli("cleanup", "--json", config=cfg, check=0).stdout)
    assert plan["remove"] == 0 and plan["removed"] == []
    reasons = {d["backup_id"]: d["reasons"] for d in plan["decisions"]}
    assert reasons[inc1["id"]] == [f"parent of kept incremental backup {inc2['id']}"]
    assert reasons[full["id"]] == [f"parent of kept incremental backup {inc1['id']}"]

    # The catalog rebuilt from storage alone knows the chain again.
    (tmp_path / "state" / "catalog.db").unlink()
    run_cli("catalog", "rebuild", "--json", config=cfg, check=0)
    listed = json.loads(run_cli("list", "--json", config=cfg, check=0).stdout)
    assert {e["id"]: (e["type"], e["parent"], e["status"]) for e in listed} == {
        full["id"]: ("full", None, "verified"), inc1["id"]: ("incremental", full["id"], "verified"),
        inc2["id"]: ("incremental", inc1["id"], "verified")}
    dest = tmp_path / "restored"
    run_cli("restore", inc2["id"], "--to", str(dest), "--json", config=cfg, check=0)
    assert_same_tree(expected, snapshot(restored_root(dest, etc)))


def test_the_readme_runbook_restores_a_chain_point_with_standard_tools_alone(tmp_path, make_config, session_keys):
    import re
    import subprocess

    from backup_tasks.records import keys as keys_mod

    tree = tmp_path / "srv" / "app"
    build(tree)
    cfg = make_config(f'[targets.files]\nkind = "files"\npaths = ["{tree}"]\n')
    backup(cfg, "full")
    change_1(tree)
    backup(cfg, "incremental")
    change_2(tree)
    point = backup(cfg, "incremental")
    expected = snapshot(tree)

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme[readme.index("**One point of a chain"):]
    script = section[section.index("```sh\n") + 6: section.index("\n```", section.index("```sh\n"))]
    values = {"STORE": tmp_path / "state" / "store" / "files", "ID": point["id"], "DEST": tmp_path / "by-hand",
              "KEY": session_keys / keys_mod.IDENTITY_FILE}
    for name, value in values.items():
        script, n = re.subn(rf"^{name}=.*$", f"{name}='{value}'", script, count=1, flags=re.M)
        assert n == 1, name
    subprocess.run(["bash", "-c", script], check=True, capture_output=True, cwd=tmp_path)
    assert_same_tree(expected, snapshot(restored_root(tmp_path / "by-hand", tree)))


def test_an_incremental_killed_mid_dump_leaves_the_chain_valid_and_the_next_builds_on_the_last_good(
        tmp_path, make_config):
    import signal
    import subprocess
    import sys
    import time

    tree = tmp_path / "srv" / "app"
    build(tree)
    cfg = make_config(f'[targets.files]\nkind = "files"\npaths = ["{tree}"]\n')
    full = backup(cfg, "full")
    change_1(tree)
    block = os.urandom(1 << 20)
    with open(tree / "photos" / "large.bin", "wb") as fh:  # enough for the dump to be caught running
        for _ in range(100):
            fh.write(block)

    staging = tmp_path / "state" / "staging"
    env = {k: v for k, v in os.environ.items() if k not in ("BACKUP_BROKER_URL", "BACKUP_CONFIG")}
    victim = subprocess.Popen([sys.executable, "-m", "backup_tasks.cli", "backup", "files", "--type", "incremental",
                               "--json", "--config", str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not list(staging.glob("*/.data.tar.*.part")):
        time.sleep(0.005)
    assert list(staging.glob("*/.data.tar.*.part")), "the dump was never caught running"
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    killed = json.loads(run_cli("list", "--json", config=cfg, check=0).stdout)[0]
    assert killed["id"] != full["id"] and killed["status"] == "running"  # never committed, never a parent

    nxt = backup(cfg, "incremental")
    assert (nxt["status"], nxt["type"], nxt["parent"]) == (Status.VERIFIED, "incremental", full["id"])
    dest = tmp_path / "restored"
    run_cli("restore", nxt["id"], "--to", str(dest), "--json", config=cfg, check=0)
    assert_same_tree(snapshot(tree), snapshot(restored_root(dest, tree)))


def test_two_roots_named_out_of_order_stream_in_tree_order_and_an_incremental_restores_both(tmp_path, make_config):
    first, second = tmp_path / "srv" / "b-app", tmp_path / "srv" / "a-etc"
    build(first)
    (second / "conf.d").mkdir(parents=True)
    (second / "conf.d" / "site.conf").write_text("listen 80\n")
    # "b-app" is named before "a-etc": the walk goes through the roots in tree order all the same
    cfg = make_config(f'[targets.files]\nkind = "files"\npaths = ["{first}", "{second}"]\n')
    full = backup(cfg, "full")
    change_1(first)
    (second / "conf.d" / "site.conf").write_text("listen 443\n")
    inc = backup(cfg, "incremental")
    assert (full["status"], inc["status"], inc["type"], inc["parent"]) == (Status.VERIFIED, Status.VERIFIED, "incremental", full["id"])

    dest = tmp_path / "restored"
    run_cli("restore", inc["id"], "--to", str(dest), "--json", config=cfg, check=0)
    for root in (first, second):
        assert_same_tree(snapshot(root), snapshot(restored_root(dest, root)))
