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

import pytest

from backup_tasks.errors import VerificationFailed
from backup_tasks.sources.base import source_for
from backup_tasks.sources.files import chain_extract
from backup_tasks.sources.files.changes import Chain
from backup_tasks.sources.files.tarstream import scan_stream
from backup_tasks.sources.files.tree_listing import ListingWriter, decode, encode, listing_lines, read_listing
from test_files_source import (  # noqa: F401 - tree is a fixture
    LONG, SUBSECOND_NS, assert_same_tree, restored_root, snapshot, target, tree, write)


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
    archive, same, _ = dump(tmp_path, tree, "remounted", parent=moved)
    assert scan_stream(io.BytesIO(archive)) == [] and same["changes"]["modified"] == same["changes"]["new"] == 0

    # chmod: ctime moves, content does not; the new mode is recorded, the bytes are not read again.
    (tree / "bin" / "run.sh").chmod(0o700)
    # A same-size edit with the mtime put back: metadata cannot see it.
    key = tree / "secret.key"
    before = key.stat()
    key.chmod(0o600)
    key.write_bytes(b"-----BEGIN KEX-----\n")
    key.chmod(0o400)
    os.utime(key, ns=(before.st_atime_ns, before.st_mtime_ns))
    archive, inc, l1 = dump(tmp_path, tree, "inc", parent=l0)
    assert scan_stream(io.BytesIO(archive)) == [] and "files" not in inc  # counts only: the listing is the record
    entries = by_path(l1)
    run = entries[f"{prefix}/bin/run.sh"]
    assert (run["change"], run["mode"], run["in"]) == ("metadata", 0o700, "full")
    assert entries[f"{prefix}/secret.key"]["change"] == "metadata"  # missed, as metadata-based detection must

    archive, rehashed, l2 = dump(tmp_path, tree, "rehash", parent=l0, rehash=True)
    assert [e["path"] for e in scan_stream(io.BytesIO(archive))] == [f"{prefix}/secret.key"]
    assert by_path(l2)[f"{prefix}/secret.key"]["change"] == "modified"


def test_each_change_of_metadata_is_told_apart_and_an_unchanged_line_is_the_parents(tree, tmp_path):
    """The short way through the join (an unchanged file) against each change that must leave it."""
    prefix = str(tree).lstrip("/")
    _, _, l0 = dump(tmp_path, tree, "full")
    stamp = tree / "data" / "stamp"
    os.chmod(tree / "secret.key", 0o440)
    if os.geteuid() == 0:
        os.chown(tree / "config" / "ünïcødé 設定.conf", 4242, 4242)
    # another inode with the same size and mtime: new content as far as metadata can tell
    twin = write(tree / "data" / "stamp.new", b"PRECISE\n")
    os.utime(twin, ns=(SUBSECOND_NS, SUBSECOND_NS))
    os.replace(twin, stamp)
    os.mkfifo(tree / "data" / "pipe")  # the walk skips it, with a warning
    # a parent line without some of the fields that decide: the long way decides
    untouched, latin = f"{prefix}/data/{LONG}/deep.bin", prefix + "/" + os.fsdecode(b"latin1-\xe9t\xe9.txt")
    partial = tmp_path / "partial.jsonl.zst"
    writer = ListingWriter(partial)
    for entry in read_listing(l0):
        writer.write({k: v for k, v in entry.items() if k != "uid"} if entry["path"] == untouched else entry)
    writer.close()
    archive, inc, l1 = dump(tmp_path, tree, "inc", parent=partial)
    entries, parents = by_path(l1), by_path(l0)
    assert [e["path"] for e in scan_stream(io.BytesIO(archive))] == [f"{prefix}/data/stamp"]
    assert entries[f"{prefix}/data/stamp"]["change"] == "modified"
    assert f"{prefix}/data/pipe" not in entries and any("pipe: skipped" in w for w in inc["warnings"])
    assert entries[f"{prefix}/secret.key"]["change"] == entries[untouched]["change"] == "metadata"
    assert entries[untouched]["uid"] == os.getuid()  # recorded again from lstat
    if os.geteuid() == 0:
        assert (entries[f"{prefix}/config/ünïcødé 設定.conf"]["change"], entries[f"{prefix}/config/ünïcødé 設定.conf"]["uid"]) == (
            "metadata", 4242)
    assert entries[latin]["change"] == "unchanged"  # a name that is not UTF-8 takes the short way too
    unchanged = [p for p, e in entries.items() if e["change"] == "unchanged"]
    assert len(unchanged) >= 5 and inc["changes"]["unchanged"] == len(unchanged)
    for path in unchanged:  # the parent's entry, keys in their places, but for change
        assert list(entries[path].items()) == list({**parents[path], "change": "unchanged"}.items())


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


def restore_point(tmp_path: Path, listing: Path, archives: dict[str, bytes], name: str,
                  read_to: dict[str, tuple[int, int]] | None = None) -> Path:
    """Restore the point ``listing`` names; ``read_to`` hears how far each archive was read, and its length."""
    @contextlib.contextmanager
    def open_archive(backup_id):
        stream = io.BytesIO(archives[backup_id])
        yield stream
        if read_to is not None:
            read_to[backup_id] = (stream.tell(), len(archives[backup_id]))

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
    assert [e["path"] for e in scan_stream(io.BytesIO(inc_data))] == [f"{prefix}/new.txt"]
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
    again_data, again, l2 = dump(tmp_path, tree, "again", parent=shuffled)
    assert again["changes"] == {**inc["changes"]}
    assert scan_stream(io.BytesIO(again_data)) == scan_stream(io.BytesIO(inc_data))
    assert {p: (e["change"], e.get("member")) for p, e in by_path(l2).items()} == {
        p: (e["change"], e.get("member")) for p, e in entries.items()}

    got = snapshot(restored_root(restore_point(tmp_path, l1, {"full": full_data, "inc": inc_data}, "inc"), tree))
    want = {k: v for k, v in snapshot(tree).items() if not (k.endswith(".tmp") or k.startswith("web/node_modules"))}
    assert got == want


def test_hard_links_are_tar_links_and_come_back_linked_through_a_chain(tree, tmp_path):
    prefix = str(tree).lstrip("/")
    full_data, full, l0 = dump(tmp_path, tree, "full")
    assert {e["path"]: e["type"] for e in scan_stream(io.BytesIO(full_data))}[f"{prefix}/bin/start.sh"] == "hardlink"
    os.link(tree / "bin" / "run.sh", tree / "bin" / "again.sh")  # a new name for a file the full holds
    write(tree / "pair" / "a", b"two names\n")
    os.link(tree / "pair" / "a", tree / "pair" / "b")
    inc_data, inc, l1 = dump(tmp_path, tree, "inc", parent=l0)
    # In the incremental's archive the second name of a new file is a tar hard link to the first.
    assert {e["path"].removeprefix(prefix): (e["type"], e.get("link", "").removeprefix(prefix)) for e in scan_stream(io.BytesIO(inc_data))} == {
        "/bin/again.sh": ("file", ""), "/pair/a": ("file", ""), "/pair/b": ("hardlink", "/pair/a")}
    assert by_path(l1)[f"{prefix}/bin/run.sh"]["in"] == "full"  # only its link count moved

    root = restored_root(restore_point(tmp_path, l1, {"full": full_data, "inc": inc_data}, "inc"), tree)
    want = {k: v for k, v in snapshot(tree).items() if not (k.endswith(".tmp") or k.startswith("web/node_modules"))}
    assert snapshot(root) == want  # nlink included
    assert len({(root / "bin" / n).stat().st_ino for n in ("run.sh", "start.sh", "again.sh")}) == 1
    assert (root / "pair" / "a").stat().st_ino == (root / "pair" / "b").stat().st_ino


def rewritten(listing: Path, out: Path, change) -> Path:
    """A copy of ``listing`` with ``change(entry)`` applied to each entry (None drops it)."""
    writer = ListingWriter(out)
    for entry in read_listing(listing):
        if (entry := change(entry)) is not None:
            writer.write(entry)
    writer.close()
    return out


def test_check_and_restore_compare_the_archive_with_the_listing_and_catch_a_listing_that_differs(tree, tmp_path):
    source = source_for("files")
    data, report, listing = dump(tmp_path, tree, "full")
    assert "files" not in report and report["entry_count"] == report["listing_entries"]
    manifest = {"backup_id": "full", "parent": None, "source": report}
    checked = source.check(io.BytesIO(data), manifest, tmp_path, listing=listing)
    assert (checked["files_checked"], checked["entries_checked"]) == (report["file_count"], report["entry_count"])
    result = source.restore(io.BytesIO(data), manifest, tmp_path / "dest", force=False, dry_run=False, listing=listing)
    assert result["files"] == report["file_count"]
    excluded = ("cache.tmp", "web/node_modules", "data/deeper/upload.part.tmp")  # by the target's exclude globs
    original = {k: v for k, v in snapshot(tree).items() if not k.startswith(excluded)}
    assert_same_tree(original, snapshot(restored_root(tmp_path / "dest", tree)))

    prefix = str(tree).lstrip("/")
    other = rewritten(listing, tmp_path / "other-sha.jsonl.zst",
                      lambda e: {**e, "sha256": "0" * 64} if e["path"] == f"{prefix}/secret.key" else e)
    missing = rewritten(listing, tmp_path / "missing.jsonl.zst", lambda e: None if e["path"] == f"{prefix}/bin/run.sh" else e)
    for bad, check in ((other, "file-sha256"), (missing, "tar-listing")):
        with pytest.raises(VerificationFailed) as err:
            source.check(io.BytesIO(data), manifest, tmp_path, listing=bad)
        assert err.value.check == check
        with pytest.raises(VerificationFailed) as err:
            source.restore(io.BytesIO(data), manifest, tmp_path / f"dest-{check}", force=False, dry_run=False, listing=bad)
        assert err.value.check == check

    # An incremental's archive holds only the files the listing says it holds.
    (tree / "bin" / "run.sh").write_text("#!/bin/sh\necho changed\n")
    inc_data, inc_report, inc_listing = dump(tmp_path, tree, "inc", parent=listing)
    inc = {"backup_id": "inc", "parent": "full", "source": inc_report}
    held = [e["path"] for e in read_listing(inc_listing) if e.get("in") == "inc"]
    assert f"{prefix}/bin/run.sh" in held and len(held) < report["file_count"]
    # (run.sh and start.sh are one file under two names: the second is a tar hard link, an entry but not a file)
    assert source.check(io.BytesIO(inc_data), inc, tmp_path, listing=inc_listing)["entries_checked"] == len(held)
    with pytest.raises(VerificationFailed) as err:  # the full's archive is not this backup's
        source.check(io.BytesIO(data), inc, tmp_path, listing=inc_listing)
    assert err.value.check == "tar-listing"


def test_every_listing_line_is_what_the_encoder_writes_for_its_entry(tree, tmp_path):
    # The second pass settles most lines by appending the scan's fields to the draft's bytes
    # instead of encoding the entry again; the listing must not tell the two apart, in a full
    # and in an incremental (new files, a rename, hard links, names that are not UTF-8).
    _, _, l0 = dump(tmp_path, tree, "full")
    write(tree / "new.txt", b"new\n")
    os.rename(tree / "data" / "stamp", tree / "data" / "stamp-moved")
    os.link(tree / "new.txt", tree / "new-link.txt")
    write(tree / os.fsdecode(b"new-\xff"), b"not utf-8\n")
    _, _, l1 = dump(tmp_path, tree, "inc", parent=l0)
    for listing in (l0, l1):
        lines = list(listing_lines(listing))
        assert lines and all(line == encode(decode(line)) + b"\n" for line in lines)
        assert sum(b'"sha256":' in line for line in lines) > 1
    entries = by_path(l1)
    prefix = str(tree).lstrip("/")
    assert entries[f"{prefix}/new.txt"]["change"] == "new" and entries[f"{prefix}/data/stamp-moved"]["change"] == "renamed"


def test_a_chain_restore_reads_each_archive_to_its_end_and_refuses_a_truncated_or_altered_one(tree, tmp_path):
    full_data, _, l0 = dump(tmp_path, tree, "full")
    (tree / "bin" / "run.sh").write_text("#!/bin/sh\necho changed\n")
    inc_data, _, l1 = dump(tmp_path, tree, "inc", parent=l0)
    read_to: dict[str, tuple[int, int]] = {}

    def restore_with(archives: dict[str, bytes], name: str) -> Path:
        return restore_point(tmp_path, l1, archives, name, read_to)

    dest = restore_with({"full": full_data, "inc": inc_data}, "good")
    root = restored_root(dest, tree)
    assert (root / "bin" / "run.sh").read_text() == "#!/bin/sh\necho changed\n"
    assert (root / "secret.key").read_bytes() == (tree / "secret.key").read_bytes()
    # Every archive was read to its last byte: the caller checks its digests as it closes.
    assert read_to["full"][0] == read_to["full"][1] and read_to["inc"][0] == read_to["inc"][1]

    # The incremental's archive cut short inside run.sh's bytes: refused as a broken archive, naming that backup.
    cut = inc_data[: inc_data.index(b"echo changed") + 4]
    with pytest.raises(VerificationFailed) as err:
        restore_with({"full": full_data, "inc": cut}, "truncated")
    assert err.value.check == "tar-structure" and "backup inc" in str(err.value)

    # One byte of a file's content changed in the full's archive: that file is refused against the listing.
    at = full_data.index((tree / "secret.key").read_bytes())
    altered = full_data[:at] + b"+" + full_data[at + 1:]
    with pytest.raises(VerificationFailed) as err:
        restore_with({"full": altered, "inc": inc_data}, "altered")
    assert err.value.check == "file-sha256" and "secret.key" in str(err.value) and "backup full" in str(err.value)
