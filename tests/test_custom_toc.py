"""Runbook: a parallel restore's file keeps a pg_dump archive's header and TOC and leaves the data a hole.

Real pg_dump archives (written to a pipe, as our dump stage does, to a file, and
uncompressed) are fed in small uneven chunks; pg_restore's post-data script from the
sparse file must be the one it makes from the whole archive. Anything that is not an
archive this parser knows is written whole, as before.
"""

from __future__ import annotations

import os
import re
import subprocess

import pytest

from backup_tasks.sources.postgres import custom_toc
from databases import make_pg_database, pg, unique

RESTRICT = re.compile(r"^\\(un)?restrict .*$", re.M)  # pg_restore's random per-run key


@pytest.fixture(scope="module")
def archives(tmp_path_factory):
    source = unique("bt_toc")
    make_pg_database(source)
    out = tmp_path_factory.mktemp("toc")
    made = {}
    try:
        for how, extra in (("pipe", []), ("file", None), ("uncompressed", ["-Z0"])):
            path = out / f"{how}.pgdump"
            if extra is None:
                subprocess.run(["pg_dump", "-Fc", "-h", "127.0.0.1", "-U", "postgres", "-f", str(path), source], check=True)
            else:
                with open(path, "wb") as fh:
                    subprocess.run(["pg_dump", "-Fc", *extra, "-h", "127.0.0.1", "-U", "postgres", source], stdout=fh, check=True)
            made[how] = path
        yield made
    finally:
        with pg() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{source}"')


def kept(data: bytes, path, chunk: int) -> custom_toc.TocOnly:
    with open(path, "wb") as fh:
        sink = custom_toc.TocOnly(fh)
        for at in range(0, len(data), chunk):
            sink.write(data[at:at + chunk])
        sink.close()
    return sink


def post_data(path) -> str:
    done = subprocess.run(["pg_restore", "--section=post-data", "-f", "-", str(path)], capture_output=True, text=True, check=True)
    return RESTRICT.sub("", done.stdout)


@pytest.mark.parametrize("how", ["pipe", "file", "uncompressed"])
def test_only_the_toc_is_written_and_post_data_reads_the_same_from_it(archives, tmp_path, how):
    data = archives[how].read_bytes()
    end = custom_toc.toc_end(data)
    assert end is not None and data[end] in custom_toc.DATA_BLOCKS
    sparse = tmp_path / "sparse.pgdump"
    sink = kept(data, sparse, 777)  # uneven chunks: the TOC's end is found across many writes
    assert sink.written == end and sink.size == len(data)
    assert sparse.stat().st_size == len(data) and sparse.stat().st_blocks * 512 <= end + 8192
    assert post_data(sparse) == post_data(archives[how])
    assert "CREATE INDEX" in post_data(sparse) and "FOREIGN KEY" in post_data(sparse)


def test_what_is_not_a_known_archive_is_written_whole(archives, tmp_path):
    data = archives["pipe"].read_bytes()
    newer = data[:5] + bytes([1, 99, 0]) + data[8:]  # an archive version this parser does not know
    cut = data[: custom_toc.toc_end(data) - 10]  # the stream ends inside the TOC
    for case in (os.urandom(100_000), newer, cut, b"PGD"):
        path = tmp_path / "whole"
        sink = kept(case, path, 4096)
        assert sink.written == len(case) and path.read_bytes() == case
