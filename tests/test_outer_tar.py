"""Runbook: a base backup's outer tar is an ordinary tar: GNU tar and tarfile read it, byte for byte what tarfile writes."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile

import pytest

from backup_tasks.sources.postgres import outer_tar


def test_the_outer_tar_reads_back_with_gnu_tar_and_matches_tarfiles_own_bytes(tmp_path):
    files = {"backup_manifest": b"{}\n", "base.tar": os.urandom(3 * (1 << 20) + 777), "pg_wal.tar": b""}
    members = []
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        members.append((name, tmp_path / name))
    out = io.BytesIO()
    assert outer_tar.write(out, members) == len(out.getvalue())
    archive = tmp_path / "outer.tar"
    archive.write_bytes(out.getvalue())

    into = tmp_path / "x"
    into.mkdir()
    subprocess.run(["tar", "-xf", str(archive), "-C", str(into)], check=True)
    assert {p.name: p.read_bytes() for p in into.iterdir()} == files
    with tarfile.open(archive) as tar:
        assert [(m.name, m.uid, m.uname) for m in tar.getmembers()] == [(n, 0, "") for n in files]

    expected = io.BytesIO()
    with tarfile.open(fileobj=expected, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for name, path in members:
            info = tar.gettarinfo(str(path), arcname=name)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = int(info.mtime)
            with open(path, "rb") as fh:
                tar.addfile(info, fh)
    assert out.getvalue() == expected.getvalue()


def test_a_file_that_shrinks_while_archived_is_an_error_not_a_short_member(tmp_path):
    path = tmp_path / "base.tar"
    path.write_bytes(b"x" * 5000)

    class Shrinking(io.BytesIO):
        def write(self, data):
            if len(self.getvalue()) == 0:
                path.write_bytes(b"x" * 10)  # truncated after the header was built from the old size
            return super().write(data)

    with pytest.raises(OSError, match="shrank"):
        outer_tar.write(Shrinking(), [("base.tar", path)])
