"""A long member list is archived by several GNU tar runs joined into one ordinary archive.

Real trees, real GNU tar, read back by GNU tar and by Python's tarfile; a batch of a few
names stands in for the hundred thousand of a real backup.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import subprocess
import tarfile
from pathlib import Path

from backup_tasks.sources.files import tar_batches
from backup_tasks.sources.files.changes import LINKED, Chain, first_pass
from backup_tasks.sources.files.gnu_tar import _TAIL, _HeldTail, run_tar
from backup_tasks.sources.files.tarstream import scan_stream


def make_tree(root: Path) -> list[str]:
    """20 files in list order; f03 and f12 are one file (a hard link), and so are f16 and f17."""
    root.mkdir(parents=True)
    names = []
    for i in range(20):
        path = root / f"f{i:02d}"
        if i == 12:
            os.link(root / "f03", path)
        elif i == 17:
            os.link(root / "f16", path)
        else:
            path.write_bytes(os.urandom(i * 300))  # some end inside a block, some on a record boundary
        names.append(str(path).lstrip("/"))
    return names


def write_list(path: Path, names: list[str]) -> Path:
    path.write_bytes(b"".join(n.encode() + b"\0" for n in names))
    return path


def members(data: bytes) -> list[tuple]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as archive:
        return [(m.name, m.type, m.linkname, hashlib.sha256(archive.extractfile(m).read()).hexdigest() if m.isreg() else "")
                for m in archive]


def test_a_cut_never_separates_two_names_of_one_file(tmp_path):
    listed = write_list(tmp_path / "list", make_tree(tmp_path / "tree"))
    # cuts wanted after 5, 10, 15 names: f03..f12 are one file, so the first moves to 13, then 18
    assert tar_batches.batch_sizes(listed, 5) == [13, 5, 2]
    assert tar_batches.batch_sizes(listed, 20) == [20]
    assert tar_batches.batch_sizes(write_list(tmp_path / "empty", []), 5) == []


def test_the_walks_record_of_hard_linked_names_cuts_the_list_as_stating_each_name_does(tmp_path):
    names = make_tree(tmp_path / "tree")
    listed = write_list(tmp_path / "list", names)
    record = tmp_path / "linked.bin"
    with open(record, "wb") as out:
        linked = tar_batches.Linked(out)
        linked.add(b"a/dir", os.lstat(tmp_path))  # a directory is never a hard link
        for name in names + [str(tmp_path / "tree").lstrip("/")]:
            linked.add(name.encode(), os.lstat("/" + name))
    assert tar_batches.batch_sizes(listed, 5, record) == tar_batches.batch_sizes(listed, 5) == [13, 5, 2]
    (tmp_path / "none.bin").write_bytes(b"")  # a walk that met no hard link: the list is cut every 5 names
    assert tar_batches.batch_sizes(listed, 5, tmp_path / "none.bin") == [5, 5, 5, 5]


def test_a_files_dumps_first_pass_records_the_hard_links_the_cuts_need(tmp_path):
    names = make_tree(tmp_path / "tree")
    work = tmp_path / "work"
    work.mkdir()
    listed = work / "members.nul"
    first_pass(["/" + n for n in names], Chain("b", work / "listing.jsonl.zst"), work, listed, full=True)
    assert listed.read_bytes() == b"".join(n.encode() + b"\0" for n in names)
    assert tar_batches.batch_sizes(listed, 5, work / LINKED) == tar_batches.batch_sizes(listed, 5) == [13, 5, 2]


def test_joined_runs_make_the_archive_one_run_makes(tmp_path):
    listed = write_list(tmp_path / "list", make_tree(tmp_path / "tree"))
    one, joined = io.BytesIO(), io.BytesIO()
    work_one, work_joined = tmp_path / "w1", tmp_path / "w2"
    work_one.mkdir(), work_joined.mkdir()
    entries_one, _ = run_tar(listed, one, work_one, "t")
    entries_joined, warnings = run_tar(listed, joined, work_joined, "t", batch=5)
    assert sorted(p.name for p in work_joined.iterdir()) == ["list.0", "list.1", "list.2", "tar.stderr"]
    assert warnings == [] and entries_joined == entries_one
    assert members(joined.getvalue()) == members(one.getvalue())
    assert [m[1] for m in members(joined.getvalue())].count(tarfile.LNKTYPE) == 2  # both links, across the cuts
    assert scan_stream(io.BytesIO(joined.getvalue())) == entries_one  # one end-of-archive, at the end
    listed_by_tar = subprocess.run(["tar", "-t"], input=joined.getvalue(), capture_output=True, check=True).stdout
    assert len(listed_by_tar.splitlines()) == 20


def test_the_held_tail_passes_on_blocks_and_keeps_the_last_bytes_whatever_the_reads():
    data = os.urandom(100 * 512)
    for seed in range(20):
        rng, held, passed = random.Random(seed), _HeldTail(), b""
        pos = 0
        while pos < len(data):
            size = rng.choice([1, 511, 512, 4000, _TAIL, 30_000])
            for piece in held.push(data[pos : pos + size]):
                passed += bytes(piece)
            assert len(passed) % 512 == 0  # the tail starts on a block
            pos += size
        assert passed + held.tail == data and _TAIL <= len(held.tail) < _TAIL + 512
