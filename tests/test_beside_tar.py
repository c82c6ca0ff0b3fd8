"""An incremental's second pass beside tar: the listing it writes as tar's members arrive is the one written after tar.

The case it cannot settle live is a hard link made between the walk and tar: the first
name's draft line does not say it has several names, so its record was not kept when
the second name arrives as a tar hard link. The pass is then done again from the spool
file, with the same listing as a second pass after tar.
"""

from __future__ import annotations

import io
import os
from dataclasses import replace
from pathlib import Path

import orjson
import pytest

from backup_tasks.sources.base import source_for
from backup_tasks.sources.files.changes import CHANGES, LINKED, Chain, first_pass
from backup_tasks.sources.files.final_listing import ArchiveSpool, BesideTar, _LinkTargetMissed, second_pass
from backup_tasks.sources.files.gnu_tar import run_tar
from backup_tasks.sources.files.members import select_members
from backup_tasks.sources.files.tree_listing import listing_lines
from test_files_source import target, tree, write  # noqa: F401 - tree is a fixture


def both_passes(tmp_path: Path, tree: Path, parent: Path, between=lambda: None) -> tuple[bytes, bytes, Path, Chain]:
    """One incremental's first pass, ``between()``, tar with the pass beside it; then the pass after tar on the same spool."""
    work = tmp_path / "work"
    work.mkdir()
    chain = Chain("inc", work / "live.jsonl.zst", parent)
    paths, _ = select_members(target(tree))
    changes = first_pass(paths, chain, work, work / "members.nul", full=False)
    between()
    lines = sum(changes[c] for c in CHANGES)
    spool = ArchiveSpool(work / "archive.jsonl", follow=True)
    beside = BesideTar(work, spool, chain, draft_lines=lines)
    run_tar(work / "members.nul", io.BytesIO(), work, "t", on_entry=spool.add, linked=work / LINKED)
    spool.close()
    live = beside.result()
    after = replace(chain, listing_out=work / "after.jsonl.zst")
    assert second_pass(work, spool, after, draft_lines=lines) == live == len(list(listing_lines(chain.listing_out)))
    assert chain.listing_out.read_bytes() == after.listing_out.read_bytes()  # the compressed bytes too
    return b"".join(listing_lines(chain.listing_out)), b"".join(listing_lines(after.listing_out)), work, chain


@pytest.fixture
def parent(tree, tmp_path) -> Path:
    listing = tmp_path / "full.jsonl.zst"
    (tmp_path / "work-full").mkdir()
    source_for("files").dump(target(tree), io.BytesIO(), tmp_path / "work-full", chain=Chain("full", listing))
    write(tree / "pair" / "a", b"one\n")
    write(tree / "pair" / "b", b"two\n")
    write(tree / "pair" / "c", b"three\n")
    write(tree / "data" / "stamp", b"edited\n")
    os.link(tree / "bin" / "run.sh", tree / "bin" / "again.sh")  # a new name of a file the full holds
    os.link(tree / "pair" / "a", tree / "pair" / "a2")  # a new file with two names: a tar hard link
    return listing


def test_the_pass_beside_tar_writes_the_listing_the_pass_after_tar_writes(tree, tmp_path, parent):
    live, after, _, _ = both_passes(tmp_path, tree, parent)
    assert b'pair/a2","mode"' in live and b'"member":"' + str(tree / "pair" / "a").lstrip("/").encode() in live
    assert live == after


def test_a_hard_link_made_after_the_walk_sends_the_pass_back_to_the_spool_file(tree, tmp_path, parent):
    def link() -> None:  # "c" becomes a second name of "b" between the walk and tar
        (tree / "pair" / "c").unlink()
        os.link(tree / "pair" / "b", tree / "pair" / "c")

    live, after, work, chain = both_passes(tmp_path, tree, parent, between=link)
    assert b'"member":"' + str(tree / "pair" / "b").lstrip("/").encode() in live and live == after
    # The live pass could not settle it: fed the same members live again, it gives up.
    spool = ArchiveSpool(work / "again.jsonl", follow=True)
    for record in map(orjson.loads, (work / "archive.jsonl").read_bytes().splitlines()):
        spool.add(dict(zip(("path", "type", "size", "sha256", "link"), record)))
    spool.close()
    with pytest.raises(_LinkTargetMissed):
        second_pass(work, spool, replace(chain, listing_out=work / "again.jsonl.zst"), draft_lines=1, live=True)
