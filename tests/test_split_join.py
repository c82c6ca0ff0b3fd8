"""An incremental's first pass cut in two, the second half in a child process: the same outputs as one join, byte for byte.

The tree of test_files_source.py is cut at its root's entries ("empty" and after go
to the child). The changes cross the cut both ways: a file renamed from the first half
into the second and one from the second into the first must still be renames, which
only a global view of the gone files gives. A parent listing out of tree order makes
the split join give up and start over in one process, with the same answer, and so does
a child that cannot start.
"""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import pytest

from backup_tasks.sources.base import source_for
from backup_tasks.sources.files import split_join
from backup_tasks.sources.files.changes import Chain, first_pass
from backup_tasks.sources.files.members import select_members, split_members
from backup_tasks.sources.files.split_join import OtherHalf
from backup_tasks.sources.files.tree_listing import ListingWriter, read_listing
from test_files_source import target, tree, write  # noqa: F401 - tree is a fixture


def full_listing(tmp_path: Path, tree: Path) -> Path:
    listing = tmp_path / "full.jsonl.zst"
    work = tmp_path / "work-full"
    work.mkdir()
    source_for("files").dump(target(tree), io.BytesIO(), work, chain=Chain("full", listing))
    return listing


def change_across_the_cut(tree: Path) -> None:
    os.rename(tree / "data" / "stamp", tree / "web" / "stamp")  # first half -> second
    os.rename(tree / "secret.key", tree / "bin" / "secret.key")  # second half -> first
    (tree / "config" / "ünïcødé 設定.conf").chmod(0o640)
    write(tree / "web" / "new.txt", b"new\n")
    write(tree / "data" / "new.txt", b"new too\n")
    (tree / "hostname").unlink()
    os.link(tree / "web" / "new.txt", tree / "web" / "again.txt")
    os.mkfifo(tree / "web" / "pipe")  # the child's walk skips it, with a warning


def first_pass_outputs(tmp_path: Path, tree: Path, parent: Path, name: str, split: bool) -> tuple[dict, list, dict]:
    work = tmp_path / name
    work.mkdir()
    chain = Chain("inc", work / "listing.jsonl.zst", parent)
    tgt = target(tree)
    paths, warnings = select_members(tgt)
    rest = None
    if split:
        cut = split_members(tgt, warnings)
        assert cut is not None and cut[1].start == "empty"
        paths, half = cut
        rest = OtherHalf(half, chain, work, warnings, full=False)
    counts = first_pass(paths, chain, work, work / "members.nul", full=False, rest=rest)
    files = {p.name: p.read_bytes() for p in sorted(work.iterdir()) if p.is_file() and p.suffix != ".sqlite"}
    return counts, warnings, files


def test_a_split_first_pass_writes_what_one_join_writes_and_finds_renames_across_the_cut(tree, tmp_path):
    parent = full_listing(tmp_path, tree)
    change_across_the_cut(tree)
    one = first_pass_outputs(tmp_path, tree, parent, "one", split=False)
    two = first_pass_outputs(tmp_path, tree, parent, "two", split=True)
    counts, warnings, files = two
    assert counts["renamed"] == 2 and counts["new"] == 3 and counts["deleted"] == 3
    assert any("pipe: skipped" in w for w in warnings)
    assert set(files) >= {"draft.jsonl", "draft-marks.bin", "members.nul", "renamed.jsonl", "linked.bin"}
    assert not (tmp_path / "two" / "second-half").exists()
    assert two == one


def test_a_dump_split_in_two_gives_the_same_archive_and_listing(tree, tmp_path, monkeypatch):
    parent = full_listing(tmp_path, tree)
    change_across_the_cut(tree)
    shuffled = tmp_path / "shuffled.jsonl.zst"  # out of tree order: the split join starts over in one process
    writer = ListingWriter(shuffled)
    for entry in reversed(list(read_listing(parent))):
        writer.write(entry)
    writer.close()

    def dump(name: str, parent: Path) -> tuple[bytes, dict, bytes]:
        work, out, listing = tmp_path / f"work-{name}", io.BytesIO(), tmp_path / f"{name}.jsonl.zst"
        work.mkdir()
        report = source_for("files").dump(target(tree), out, work, chain=Chain("inc", listing, parent))
        return out.getvalue(), report, listing.read_bytes()

    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))  # a quiet host, whatever runs beside the tests
    assert not split_join.worth_splitting(Chain("inc", tmp_path / "x", parent))  # a small tree: one process
    one = dump("one", parent)
    assert one[1]["listing_entries"] == len(list(read_listing(tmp_path / "one.jsonl.zst"))) > one[1]["changes"]["unchanged"] > 0
    monkeypatch.setattr(split_join, "SPLIT_FROM_BYTES", 0)
    assert split_join.worth_splitting(Chain("inc", tmp_path / "x", parent))
    with monkeypatch.context() as busy:  # no core to spare: one process
        busy.setattr(os, "getloadavg", lambda: (float(os.cpu_count() + 1), 0.0, 0.0))
        assert not split_join.worth_splitting(Chain("inc", tmp_path / "x", parent))
    assert dump("two", parent) == one
    again = dump("again", shuffled)
    assert again[1]["changes"] == one[1]["changes"] and again[0] == one[0]
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-interpreter-here"))  # the child cannot start
    assert dump("alone", parent) == one and not (tmp_path / "work-alone" / "second-half").exists()


@pytest.mark.parametrize("paths", [("one",), ("a", "b")])
def test_only_one_directory_root_with_entries_to_share_is_cut(tmp_path, paths):
    for name in paths:
        write(tmp_path / name / "only" / "file", b"x")
    roots = [tmp_path / name for name in paths]
    assert split_members(target(*roots), []) is None  # one entry all the way down, or two roots
    write(tmp_path / paths[0] / "only" / "second", b"y")
    cut = split_members(target(roots[0]), [])
    if len(paths) == 1:
        first, half = cut
        assert list(first) == [str(roots[0]), str(roots[0] / "only"), str(roots[0] / "only" / "file")]
        assert (half.directory, half.start) == (str(roots[0] / "only"), "second")
        assert list(half.paths([])) == [str(roots[0] / "only" / "second")]
