"""Change detection and listing-driven restore of files backups, at the source level with a real tree and GNU tar.

The pipeline tests (test_incremental_files.py) run whole chains through storage; these
pin the rules of change detection one by one: a chmod is metadata and is not re-read,
a same-size edit with its mtime put back is only caught with rehash, a device number
that moved (a snapshot mount) changes nothing, renames are found whichever side of
their old name they sort, a parent listing out of tree order gives the same answer, a
restore from the listing reproduces a tree with hard links, long names and names that
are not UTF-8, and hard links stay hard links through a chain.
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

from backup_tasks.sources.base import source_for
from backup_tasks.sources.files import chain_extract
from backup_tasks.sources.files.changes import Chain
from backup_tasks.sources.files.tree_listing import ListingWriter, read_listing
from test_files_source import restored_root, snapshot, target, tree, write  # noqa: F401 - tree is a fixture


def dump(tmp_path: Path, tree: Path, name: str, parent: Path | None = None, rehash: bool = False) -> tuple[bytes, dict, Path]:
    work = tmp_path / f"work-{name}"
    work.mkdir()
    out = io.BytesIO()
    listing = tmp_path / f"{name}.jsonl.zst"
    report = source_for("files").dump(target(tree), out, work, chain=Chain(backup_id=name, listing_out=listing,
                                                                            parent_listing=parent, rehash=rehash))
    return out.getvalue(), report, listing


def by_path(listing: Path) -> dict[str, dict]:
    return {e["path"]: e for e in read_listing(listing)}


def test_a_chmod_is_metadata_a_hidden_edit_needs_rehash_and_a_new_device_number_changes_nothing(tree, tmp_path):
    prefix = str(tree).lstrip("/")
    _, full, l0 = dump(tmp_path, tree, "full")
    assert full["changes"]["new"] == full["listing_entries"] > 0

    # A moved device number (a remounted snapshot): nothing is archived again.
    moved = tmp_path / "moved.jsonl.zst"
    writer = ListingWriter(moved)
    for entry in read_listing(l0):
        writer.write({**entry, "dev": entry["dev"] + 7})
    writer.close()
    _, same, _ = dump(tmp_path, tree, "remounted", parent=moved)
    assert same["files"] == [] and same["changes"]["modified"] == same["changes"]["new"] == 0

    # chmod: ctime moves, content does not; the new mode is recorded, the bytes are not read again.
    (tree / "bin" / "run.sh").chmod(0o700)
    # A same-size edit with the mtime put back: metadata cannot see it.
    key = tree / "secret.key"
    before = key.stat()
    key.chmod(0o600)
    key.write_bytes(b"-----BEGIN KEX-----\n")
    key.chmod(0o400)
    os.utime(key, ns=(before.st_atime_ns, before.st_mtime_ns))
    _, inc, l1 = dump(tmp_path, tree, "inc", parent=l0)
    assert inc["files"] == []
    entries = by_path(l1)
    run = entries[f"{prefix}/bin/run.sh"]
    assert (run["change"], run["mode"], run["in"]) == ("metadata", 0o700, "full")
    assert entries[f"{prefix}/secret.key"]["change"] == "metadata"  # missed, as metadata-based detection must

    _, rehashed, l2 = dump(tmp_path, tree, "rehash", parent=l0, rehash=True)
    assert [e["path"] for e in rehashed["files"]] == [f"{prefix}/secret.key"]
    assert by_path(l2)[f"{prefix}/secret.key"]["change"] == "modified"


def test_restore_from_a_full_listing_reproduces_hard_links_long_and_non_utf8_names(tree, tmp_path):
    data, report, listing = dump(tmp_path, tree, "full")
    archives = {"full": data}

    @contextlib.contextmanager
    def open_archive(backup_id):
        yield io.BytesIO(archives[backup_id])

    work = tmp_path / "plan"
    work.mkdir()
    plan = chain_extract.ChainPlan(listing, work)
    dest = tmp_path / "restore"
    dest.mkdir(mode=0o700)
    counts = chain_extract.restore(plan, dest, open_archive)
    plan.close()
    want = {k: v for k, v in snapshot(tree).items() if not (k.endswith(".tmp") or k.startswith("web/node_modules"))}
    got = snapshot(restored_root(dest, tree))
    # A hard link comes back as a hard link: the same inode under both names, its bytes read once.
    assert want == got
    root = restored_root(dest, tree)
    assert (root / "bin" / "run.sh").stat().st_ino == (root / "bin" / "start.sh").stat().st_ino
    assert counts["from_backups"] == [{"backup_id": "full", "files": report["file_count"], "bytes": report["bytes"]}]

    # --path: one directory and the directories leading to it.
    work2 = tmp_path / "plan2"
    work2.mkdir()
    plan = chain_extract.ChainPlan(listing, work2, chain_extract.normalise([str(tree / "config")]))
    dest2 = tmp_path / "some"
    dest2.mkdir(mode=0o700)
    chain_extract.restore(plan, dest2, open_archive)
    plan.close()
    assert sorted(snapshot(restored_root(dest2, tree))) == ["config", "config/ünïcødé 設定.conf"]


def restore_point(tmp_path: Path, listing: Path, archives: dict[str, bytes], name: str) -> Path:
    @contextlib.contextmanager
    def open_archive(backup_id):
        yield io.BytesIO(archives[backup_id])

    work = tmp_path / f"plan-{name}"
    work.mkdir()
    plan = chain_extract.ChainPlan(listing, work)
    dest = tmp_path / f"restore-{name}"
    dest.mkdir(mode=0o700)
    try:
        chain_extract.restore(plan, dest, open_archive)
    finally:
        plan.close()
    return dest


def test_renames_on_either_side_of_their_old_name_and_a_parent_out_of_order(tree, tmp_path):
    prefix = str(tree).lstrip("/")
    full_data, _, l0 = dump(tmp_path, tree, "full")
    (tree / "0-first").mkdir()
    os.rename(tree / "data" / "stamp", tree / "0-first" / "stamp")  # sorts before its old name
    (tree / "zz").mkdir()
    os.rename(tree / "config" / "ünïcødé 設定.conf", tree / "zz" / "moved.conf")  # and after
    (tree / "secret.key").unlink()
    write(tree / "new.txt", b"new\n")
    inc_data, inc, l1 = dump(tmp_path, tree, "inc", parent=l0)
    assert [e["path"] for e in inc["files"]] == [f"{prefix}/new.txt"]
    entries = by_path(l1)
    for new, old in (("0-first/stamp", "data/stamp"), ("zz/moved.conf", "config/ünïcødé 設定.conf")):
        moved = entries[f"{prefix}/{new}"]
        assert (moved["change"], moved["in"], moved["member"]) == ("renamed", "full", f"{prefix}/{old}")
        assert f"{prefix}/{old}" not in entries
    assert f"{prefix}/secret.key" not in entries and entries[f"{prefix}/new.txt"]["in"] == "inc"
    assert inc["changes"]["renamed"] == 2 and inc["changes"]["deleted"] == 3
    assert list(entries) == sorted(entries, key=lambda p: p.replace("/", "\0"))  # the next join needs tree order

    # A parent listing out of tree order (an older one, roots not in order) is sorted first: same answer.
    shuffled = tmp_path / "shuffled.jsonl.zst"
    writer = ListingWriter(shuffled)
    for entry in reversed(list(read_listing(l0))):
        writer.write(entry)
    writer.close()
    _, again, l2 = dump(tmp_path, tree, "again", parent=shuffled)
    assert again["changes"] == {**inc["changes"]} and again["files"] == inc["files"]
    assert {p: (e["change"], e.get("member")) for p, e in by_path(l2).items()} == {
        p: (e["change"], e.get("member")) for p, e in entries.items()}

    got = snapshot(restored_root(restore_point(tmp_path, l1, {"full": full_data, "inc": inc_data}, "inc"), tree))
    want = {k: v for k, v in snapshot(tree).items() if not (k.endswith(".tmp") or k.startswith("web/node_modules"))}
    assert got == want


def test_hard_links_are_tar_links_and_come_back_linked_through_a_chain(tree, tmp_path):
    prefix = str(tree).lstrip("/")
    full_data, full, l0 = dump(tmp_path, tree, "full")
    assert {e["path"]: e["type"] for e in full["files"]}[f"{prefix}/bin/start.sh"] == "hardlink"
    os.link(tree / "bin" / "run.sh", tree / "bin" / "again.sh")  # a new name for a file the full holds
    write(tree / "pair" / "a", b"two names\n")
    os.link(tree / "pair" / "a", tree / "pair" / "b")
    inc_data, inc, l1 = dump(tmp_path, tree, "inc", parent=l0)
    # In the incremental's archive the second name of a new file is a tar hard link to the first.
    assert {e["path"].removeprefix(prefix): (e["type"], e.get("link", "").removeprefix(prefix)) for e in inc["files"]} == {
        "/bin/again.sh": ("file", ""), "/pair/a": ("file", ""), "/pair/b": ("hardlink", "/pair/a")}
    assert by_path(l1)[f"{prefix}/bin/run.sh"]["in"] == "full"  # only its link count moved

    root = restored_root(restore_point(tmp_path, l1, {"full": full_data, "inc": inc_data}, "inc"), tree)
    want = {k: v for k, v in snapshot(tree).items() if not (k.endswith(".tmp") or k.startswith("web/node_modules"))}
    assert snapshot(root) == want  # nlink included
    assert len({(root / "bin" / n).stat().st_ino for n in ("run.sh", "start.sh", "again.sh")}) == 1
    assert (root / "pair" / "a").stat().st_ino == (root / "pair" / "b").stat().st_ino
