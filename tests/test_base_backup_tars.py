"""Runbook: a base backup's tars: the outer one we write is an ordinary tar (GNU tar and tarfile read it, byte for
byte what tarfile writes), and the stream reader that restore and verify use reads what tarfile reads and refuses the rest."""

from __future__ import annotations

import io
import os
import random
import subprocess
import tarfile

import pytest

from backup_tasks.errors import VerificationFailed
from backup_tasks.sources.postgres import base_layout, datadir, outer_tar, tar_picker, tar_reader


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


def _tar(entries: list[tuple[str, bytes | None]], fmt=tarfile.PAX_FORMAT, extra=()) -> bytes:
    """A tar of (name, bytes) files and (name, None) directories, plus ready-made TarInfo ``extra`` entries."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o700
                tar.addfile(info)
            else:
                info.size, info.mode = len(data), 0o600
                tar.addfile(info, io.BytesIO(data))
        for info in extra:
            tar.addfile(info)
    return buf.getvalue()


def test_the_stream_reader_reads_nested_tars_as_tarfile_does_and_skips_what_is_left_unread(tmp_path):
    long_name = "base/16384/" + "x" * 150  # past ustar's 100 bytes: a pax path record
    inner = _tar([("base", None), ("base/16384", None), ("base/16384/1259", os.urandom(9000)), (long_name, b"long"),
                  ("global/pg_control", b"c" * 8192), ("empty", b"")])
    (tmp_path / "base.tar").write_bytes(inner)
    (tmp_path / "backup_manifest").write_bytes(b"{}")
    outer = io.BytesIO()
    outer_tar.write(outer, [("backup_manifest", tmp_path / "backup_manifest"), ("base.tar", tmp_path / "base.tar")])
    outer.seek(0)

    with tarfile.open(fileobj=io.BytesIO(inner)) as tar:
        expected = [(m.name, m.isdir(), tar.extractfile(m).read() if m.isfile() else None) for m in tar.getmembers()]
    got, outer_names = [], []
    for member, stream in tar_reader.members(outer):
        outer_names.append(member.name)
        if member.name == "base.tar":
            for m, data in tar_reader.members(stream):
                got.append((m.name, m.isdir(), data.read() if m.isfile() else None))
        # backup_manifest is left unread: the reader skips it
    assert outer_names == ["backup_manifest", "base.tar"] and got == expected


@pytest.mark.parametrize("layout", [base_layout.SINGLE, base_layout.OUTER])
def test_restore_extraction_refuses_links_and_paths_out_of_the_tree_and_a_cut_archive(tmp_path, layout):
    def stored(inner: bytes) -> io.BytesIO:
        if layout == base_layout.SINGLE:
            return io.BytesIO(inner)
        (tmp_path / "base.tar").write_bytes(inner)
        (tmp_path / "backup_manifest").write_bytes(b"{}")
        (tmp_path / "pg_wal.tar").write_bytes(_tar([]))
        out = io.BytesIO()
        outer_tar.write(out, [(n, tmp_path / n) for n in ("backup_manifest", "base.tar", "pg_wal.tar")])
        out.seek(0)
        return out

    report = {"format": layout}
    dest = tmp_path / "data"
    dest.mkdir()
    good = datadir.extract(stored(_tar([("global", None), ("global/pg_control", b"c" * 100), ("PG_VERSION", b"15\n")])), dest, report)
    assert good["files"] == 3 and (dest / "global" / "pg_control").read_bytes() == b"c" * 100
    assert oct((dest / "PG_VERSION").stat().st_mode & 0o777) == oct(0o600)

    link = tarfile.TarInfo("pg_tblspc/16400")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc"
    for inner, what in ((_tar([], extra=[link]), "pg_tblspc/16400"), (_tar([("../escape", b"x")]), "../escape")):
        target = tmp_path / f"refused-{len(what)}"
        target.mkdir()
        with pytest.raises(VerificationFailed, match="not a plain file or directory inside"):
            datadir.extract(stored(inner), target, report)
        assert not (tmp_path / "escape").exists()

    cut = stored(_tar([("big", os.urandom(50_000))])).getvalue()[:30_000]
    with pytest.raises(VerificationFailed, match="not a readable tar"):
        datadir.extract(io.BytesIO(cut), tmp_path / "data", report)
    with pytest.raises(VerificationFailed, match="does not read"):
        datadir.extract(io.BytesIO(cut), tmp_path / "data", {"format": "something newer"})


def test_the_picker_keeps_wanted_members_from_a_tar_fed_in_any_chunks_and_counts_the_rest():
    long_name = "base/16384/" + "x" * 120  # past ustar's 100 characters: a pax header carries the name
    data = _tar([("backup_label", b"START WAL LOCATION: 0/2000028\n"), ("base", None), (long_name, os.urandom(70_000)),
                 ("empty", b""), ("global/pg_control", os.urandom(8192)), ("backup_manifest", b'{"Files": []}')])
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        expected = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    rng = random.Random(7)
    for _ in range(20):
        picker = tar_picker.Picker({"backup_label": 100, "global/pg_control": 8192, "backup_manifest": 100, long_name: 1 << 20})
        pos = 0
        while pos < len(data):
            step = rng.choice([1, 511, 512, 513, 4096, 65536])
            picker.feed(data[pos:pos + step])
            pos += step
        assert picker.ended and picker.files == 5
        assert picker.picked == {k: v for k, v in expected.items() if k in picker.wanted}
    with pytest.raises(tar_reader.TarError, match="more than"):
        tar_picker.Picker({"global/pg_control": 100}).feed(data)
