"""Runbook for files and config targets: build a tree, back it up, break it, restore it, compare.

Everything is real: a real directory tree, real GNU tar writing the archive, Python's
tarfile extracting it. Nothing is mocked.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import subprocess
import tarfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from backup_tasks.errors import RestoreRefused, SourceError, VerificationFailed
from backup_tasks.sources.base import source_for
from backup_tasks.sources.files.gnu_tar import run_tar
from backup_tasks.sources.files.tarstream import scan_stream
from backup_tasks.sources.files.source import ConfigSource, FilesSource

SUBSECOND_NS = 1_690_000_000_123_456_789
LONG = "l" * 60 + "/" + "o" * 60 + "/" + "n" * 40  # makes a member path > 100 chars


def target(*paths, include=(), exclude=("*.tmp", "node_modules/"), kind="files", name="app-files"):
    return SimpleNamespace(name=name, kind=kind, paths=tuple(str(p) for p in paths),
                           include=tuple(include), exclude=tuple(exclude))


def write(path: Path, data: bytes, mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(mode)
    return path


@pytest.fixture
def tree(tmp_path) -> Path:
    """An application directory with every shape a real one has, plus things to exclude."""
    root = tmp_path / "srv" / "app"
    write(root / "config" / "ünïcødé 設定.conf", b"listen = 8080\n", 0o600)
    write(root / "secret.key", b"-----BEGIN KEY-----\n", 0o400)
    write(root / "bin" / "run.sh", b"#!/bin/sh\nexec app\n", 0o755)
    os.link(root / "bin" / "run.sh", root / "bin" / "start.sh")
    write(root / "data" / LONG / "deep.bin", os.urandom(70_000))
    write(root / "data" / "stamp", b"precise\n")
    os.utime(root / "data" / "stamp", ns=(SUBSECOND_NS, SUBSECOND_NS))
    write(root / os.fsdecode(b"latin1-\xe9t\xe9.txt"), b"not utf-8 name\n")
    (root / "empty" / "nested-empty").mkdir(parents=True)
    (root / "current").symlink_to("config")  # relative, inside the tree
    (root / "hostname").symlink_to("/etc/hostname")  # absolute, outside the tree
    write(root / "node_modules", b"a file named like the excluded directory is kept\n")
    # excluded:
    write(root / "cache.tmp", b"scratch")
    write(root / "web" / "node_modules" / "pkg" / "index.js", b"module.exports = 1\n")
    write(root / "data" / "deeper" / "upload.part.tmp", b"half")
    return root


def dump(source, tgt, tmp_path) -> tuple[bytes, dict]:
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    out = io.BytesIO()
    report = source.dump(tgt, out, work)
    return out.getvalue(), {"source": report}


def snapshot(root: Path) -> dict[str, dict]:
    """What a restore must reproduce: type, mode, mtime, link target, content hash, inode groups."""
    result = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            rel = str(path.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                result[rel] = {"type": "symlink", "link": os.readlink(path)}
            elif stat.S_ISDIR(st.st_mode):
                result[rel] = {"type": "dir", "mode": stat.S_IMODE(st.st_mode), "mtime": st.st_mtime_ns}
            else:
                result[rel] = {"type": "file", "mode": stat.S_IMODE(st.st_mode), "mtime": st.st_mtime_ns,
                               "sha256": _sha256(path), "nlink": st.st_nlink}
    return result


def _sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def assert_same_tree(original: dict, restored: dict) -> None:
    assert sorted(restored) == sorted(original)
    for rel, want in original.items():
        got = restored[rel]
        assert got == want, rel  # mtimes too, to the nanosecond (pax keeps them, restore sets them exactly)


def restored_root(dest: Path, root: Path) -> Path:
    return dest / str(root).lstrip("/")


# -- the runbook --------------------------------------------------------------------------------


def test_dump_check_restore_reproduces_the_tree(tree, tmp_path):
    source = source_for("files")
    data, manifest = dump(source, target(tree), tmp_path)
    report = manifest["source"]

    # The report says what is in the archive.
    assert report["format"] == "pax" and report["tool"].startswith("GNU tar ")
    assert report["roots"] == [str(tree)]
    names = {e["path"] for e in report["files"]}
    prefix = str(tree).lstrip("/")
    assert f"{prefix}/config/ünïcødé 設定.conf" in names
    assert f"{prefix}/empty/nested-empty" in names
    assert f"{prefix}/node_modules" in names  # a file: "node_modules/" excludes directories only
    assert not any(n.endswith(".tmp") or "/web/node_modules" in n for n in names)
    assert any(len(n) > 100 for n in names)
    files = [e for e in report["files"] if e["type"] == "file"]
    assert report["file_count"] == len(files) and report["bytes"] == sum(e["size"] for e in files)
    assert report["warnings"] == []
    by_name = {e["path"]: e for e in report["files"]}
    assert by_name[f"{prefix}/secret.key"]["mode"] == 0o400
    assert by_name[f"{prefix}/data/stamp"]["mtime"] == pytest.approx(SUBSECOND_NS / 1e9, abs=1e-6)
    assert {e["type"] for e in report["files"]} == {"dir", "file", "symlink", "hardlink"}
    # A name that is not UTF-8 survives JSON as an escaped surrogate (ensure_ascii must stay on).
    assert json.loads(json.dumps(report)) == report

    # Standard tools read it.
    listed = subprocess.run(["tar", "-tf", "-"], input=data, capture_output=True, check=True).stdout
    assert len(listed.splitlines()) == len(report["files"])

    # Verification reads it back completely.
    assert source.check(io.BytesIO(data), manifest, tmp_path) == {
        "files_checked": len(files), "entries_checked": len(report["files"]), "bytes_checked": report["bytes"]}

    # Restore reproduces paths, modes, mtimes, link targets, contents and hard links.
    original = snapshot(tree)
    for excluded in ("cache.tmp", "web/node_modules", "web/node_modules/pkg", "web/node_modules/pkg/index.js",
                     "data/deeper/upload.part.tmp"):
        del original[excluded]
    dest = tmp_path / "restore"
    result = source.restore(io.BytesIO(data), manifest, dest, force=False, dry_run=False)
    assert result["restored_to"] == str(dest)
    assert stat.S_IMODE(dest.stat().st_mode) == 0o700
    assert_same_tree(original, snapshot(restored_root(dest, tree)))
    assert result["files"] == len(files) and result["bytes"] == report["bytes"]
    assert result["links"] == 3 and result["dirs"] == sum(e["type"] == "dir" for e in report["files"])
    assert result["symlinks_leaving_dest"] == [f"{prefix}/hostname"]


def test_config_target_behaves_like_files_but_is_never_stored_in_plaintext(tree, tmp_path):
    env = write(tree.parent / ".env", b"DB_PASSWORD_FILE=/run/secrets/db\n", 0o600)
    config = source_for("config")
    assert isinstance(config, ConfigSource) and config.allows_plaintext is False
    assert isinstance(source_for("files"), FilesSource) and source_for("files").allows_plaintext is True
    assert config.suffix == "tar"
    data, manifest = dump(config, target(env, tree / "config", kind="config", name="app-config", exclude=()),
                          tmp_path)
    assert config.check(io.BytesIO(data), manifest, tmp_path)["files_checked"] == 2
    dest = tmp_path / "restore"
    config.restore(io.BytesIO(data), manifest, dest, force=False, dry_run=False)
    restored_env = restored_root(dest, env)
    assert restored_env.read_bytes() == env.read_bytes()
    assert stat.S_IMODE(restored_env.stat().st_mode) == 0o600


def test_include_keeps_matches_and_the_directories_leading_to_them(tree, tmp_path):
    data, manifest = dump(source_for("files"), target(tree, include=["*.conf", "bin/"]), tmp_path)
    prefix = str(tree).lstrip("/")
    names = sorted(e["path"].removeprefix(prefix) for e in manifest["source"]["files"])
    assert names == ["", "/bin", "/bin/run.sh", "/bin/start.sh", "/config", "/config/ünïcødé 設定.conf"]


def test_overlapping_roots_are_archived_once(tree, tmp_path):
    data, manifest = dump(source_for("files"), target(tree, tree / "bin", tree / "bin" / "run.sh"), tmp_path)
    paths = [e["path"] for e in manifest["source"]["files"]]
    assert len(paths) == len(set(paths))


def test_special_files_are_skipped_with_a_warning(tree, tmp_path):
    os.mkfifo(tree / "control.fifo")
    data, manifest = dump(source_for("files"), target(tree), tmp_path)
    assert any("control.fifo" in w and "skipped" in w for w in manifest["source"]["warnings"])
    assert not any(e["path"].endswith("control.fifo") for e in manifest["source"]["files"])


def test_a_missing_path_fails_the_dump_naming_it(tree, tmp_path):
    with pytest.raises(SourceError, match="srv/app/gone does not exist") as err:
        dump(source_for("files"), target(tree, tree / "gone"), tmp_path)
    assert "app-files" in err.value.message and "paths" in err.value.remedy


def test_tar_errors_fail_the_dump_with_tars_words_but_vanished_files_only_warn(tree, tmp_path):
    vanished = tmp_path / "list-vanished"
    vanished.write_bytes(f"{str(tree).lstrip('/')}/secret.key\0{str(tree).lstrip('/')}/gone\0".encode())
    entries, warnings = run_tar(vanished, io.BytesIO(), tmp_path, "app-files")
    assert [e["path"].rsplit("/", 1)[1] for e in entries] == ["secret.key"]
    assert len(warnings) == 1 and "gone: Cannot stat: No such file or directory" in warnings[0]

    unreadable = tmp_path / "list-bad"
    unreadable.write_bytes(b"tmp/" + b"x" * 5000 + b"\0")  # longer than PATH_MAX
    with pytest.raises(SourceError, match="dump of target 'app-files' failed: tar: .*File name too long") as err:
        run_tar(unreadable, io.BytesIO(), tmp_path, "app-files")
    assert err.value.remedy


class ReadsTarsEnvironmentOnFirstWrite(io.BytesIO):
    """An output that, while tar is blocked writing to it, reads tar's /proc/<pid>/environ."""

    def __init__(self) -> None:
        super().__init__()
        self.environ: bytes | None = None

    def write(self, chunk) -> int:
        if self.environ is None:
            me = os.getpid()
            children = {int(p) for t in os.listdir(f"/proc/{me}/task")
                        for p in Path(f"/proc/{me}/task/{t}/children").read_text().split()}
            tar = [p for p in children if Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0")[0].endswith(b"tar")]
            self.environ = Path(f"/proc/{tar[0]}/environ").read_bytes()
        return super().write(chunk)


def test_tar_runs_without_the_workers_secrets_in_its_environment(tree, tmp_path, monkeypatch):
    secrets = {"BT_DB_PASSWORD": "pw-never-in-tar", "BACKUP_S3_SECRET_ACCESS_KEY": "s3-never-in-tar",
               "BACKUP_CATALOG_URL": "postgresql://cat:never-in-tar@db/catalog"}
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    big = write(tree / "big.bin", os.urandom(8 << 20))  # far more than one read and a pipe hold: tar is still running at the first write
    listing = tmp_path / "list"
    listing.write_bytes(f"{str(big).lstrip('/')}\0".encode())
    out = ReadsTarsEnvironmentOnFirstWrite()
    run_tar(listing, out, tmp_path, "app-files")
    assert out.environ and b"PATH=" in out.environ and b"LC_ALL=C.UTF-8" in out.environ
    assert not [v for v in secrets.values() if v.encode() in out.environ]


class GrowsTheFileOnFirstWrite(io.BytesIO):
    """An output that appends to a source file while tar is still reading it.

    Our reader only gets its first 1 MiB chunk while tar is at most a pipe buffer ahead,
    so tar is in the middle of the 8 MiB file when it changes: a live file being written.
    """

    def __init__(self, victim: Path) -> None:
        super().__init__()
        self.victim = victim

    def write(self, data):
        if self.victim:
            with open(self.victim, "ab") as f:
                f.write(b"appended while tar read the file\n")
            self.victim = None
        return super().write(data)


def test_a_file_changing_while_tar_reads_it_is_a_warning_not_a_failure(tree, tmp_path):
    log = write(tree / "app.log", os.urandom(8 << 20))
    source = source_for("files")
    work = tmp_path / "work"
    work.mkdir()
    out = GrowsTheFileOnFirstWrite(log)
    report = source.dump(target(tree), out, work)
    assert any("app.log: file changed as we read it" in w for w in report["warnings"])
    manifest = {"source": report}
    # The archive holds what tar read; the report describes exactly that.
    assert source.check(io.BytesIO(out.getvalue()), manifest, tmp_path)["files_checked"] == report["file_count"]


# -- breaking it ---------------------------------------------------------------------------------


def test_a_flipped_byte_in_a_file_fails_check_naming_the_file(tree, tmp_path):
    source = source_for("files")
    data, manifest = dump(source, target(tree), tmp_path)
    tampered = bytearray(data)
    tampered[data.index(b"listen = 8080")] ^= 0x20
    with pytest.raises(VerificationFailed, match="ünïcødé 設定.conf") as err:
        source.check(io.BytesIO(bytes(tampered)), manifest, tmp_path)
    assert err.value.check == "file-sha256"

    # A restore of the same bytes fails as well instead of leaving a silently wrong tree.
    with pytest.raises(VerificationFailed) as err:
        source.restore(io.BytesIO(bytes(tampered)), manifest, tmp_path / "r", force=False, dry_run=False)
    assert err.value.check == "file-sha256"


def test_a_truncated_archive_fails_check_as_structure(tree, tmp_path):
    source = source_for("files")
    data, manifest = dump(source, target(tree), tmp_path)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tf:
        tf.getmembers()
        end_of_members = tf.offset
    for cut in (len(data) // 2, end_of_members):  # mid-archive; right before the end blocks
        with pytest.raises(VerificationFailed) as err:
            source.check(io.BytesIO(data[:cut]), manifest, tmp_path)
        assert err.value.check == "tar-structure"
        # tarfile alone would stop quietly at a member boundary; the restore must not.
        with pytest.raises(VerificationFailed) as err:
            source.restore(io.BytesIO(data[:cut]), manifest, tmp_path / f"r{cut}", force=False, dry_run=False)
        assert err.value.check == "tar-structure"


def test_a_listing_that_differs_from_the_manifest_fails_check(tree, tmp_path):
    source = source_for("files")
    data, manifest = dump(source, target(tree), tmp_path)
    files = manifest["source"]["files"]
    missing = {"source": {"files": files + [{"path": "srv/app/ghost", "type": "file", "size": 1}]}}
    with pytest.raises(VerificationFailed, match="missing 'srv/app/ghost'") as err:
        source.check(io.BytesIO(data), missing, tmp_path)
    assert err.value.check == "tar-listing"
    relinked = {"source": {"files": [dict(e, link="elsewhere") if e["type"] == "symlink" else e for e in files]}}
    with pytest.raises(VerificationFailed) as err:
        source.check(io.BytesIO(data), relinked, tmp_path)
    assert err.value.check == "tar-listing"


def crafted(members) -> bytes:
    """A hostile archive, written by hand the way an attacker would."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, kind, payload in members:
            info = tarfile.TarInfo(name)
            info.type = kind
            if kind == tarfile.REGTYPE:
                info.size = len(payload)
                tf.addfile(info, io.BytesIO(payload))
            else:
                info.linkname = payload or ""
                tf.addfile(info)
    return buf.getvalue()


@pytest.mark.parametrize(
    "members",
    [
        [("ok.txt", tarfile.REGTYPE, b"fine"), ("../evil", tarfile.REGTYPE, b"pwned")],
        [("ok.txt", tarfile.REGTYPE, b"fine"), ("{outside}/evil", tarfile.REGTYPE, b"pwned")],
        [("escape", tarfile.SYMTYPE, "{outside}"), ("escape/evil", tarfile.REGTYPE, b"pwned")],
        [("up", tarfile.SYMTYPE, "../outside"), ("up/evil", tarfile.REGTYPE, b"pwned")],
        [("d/one", tarfile.REGTYPE, b"fine"), ("d/out", tarfile.SYMTYPE, "{outside}"), ("d/two", tarfile.REGTYPE, b"fine"),
         ("d/out/evil", tarfile.REGTYPE, b"pwned")],
        [("escape", tarfile.SYMTYPE, "{outside}/victim"), ("hard", tarfile.LNKTYPE, "escape")],
        [("hard", tarfile.LNKTYPE, "../outside/victim")],
        [("dev", tarfile.CHRTYPE, None)],
        [("ok.txt", tarfile.REGTYPE, b"fine"), ("pipe", tarfile.FIFOTYPE, None)],
    ],
    ids=["dotdot", "absolute", "through-absolute-symlink", "through-relative-symlink", "through-symlink-among-files",
         "hardlink-via-symlink", "hardlink-outside", "device", "fifo"],
)
def test_a_crafted_archive_is_refused_and_nothing_lands_outside_dest(tmp_path, members):
    outside = tmp_path / "outside"
    write(outside / "victim", b"untouched")
    members = [(n.format(outside=outside), k, p.format(outside=outside) if isinstance(p, str) else p)
               for n, k, p in members]
    data = crafted(members)
    dest = tmp_path / "dest"
    # The record matches the archive (as if the attacker could sign it): the safety checks alone must refuse.
    innocent = {"source": {"files": scan_stream(io.BytesIO(data))}}
    with pytest.raises(VerificationFailed) as err:
        source_for("files").restore(io.BytesIO(data), innocent, dest, force=False, dry_run=False)
    assert err.value.check == "tar-safety"
    assert "refusing to restore member" in err.value.message
    # refused from the record before dest exists (a bad name), or while extracting (through a link)
    assert {p.name for p in tmp_path.iterdir()} <= {"dest", "outside"}
    assert sorted(p.name for p in outside.iterdir()) == ["victim"] and (outside / "victim").read_bytes() == b"untouched"
    assert sorted(p.name for p in outside.iterdir()) == ["victim"]
    assert (outside / "victim").read_bytes() == b"untouched"


def test_a_manifest_naming_unsafe_paths_is_refused_before_anything_is_written(tmp_path):
    data = crafted([("../evil", tarfile.REGTYPE, b"pwned")])
    manifest = {"source": {"files": [{"path": "../evil", "type": "file", "size": 5}]}}
    for dry_run in (True, False):
        with pytest.raises(VerificationFailed, match="'..'") as err:
            source_for("files").restore(io.BytesIO(data), manifest, tmp_path / "dest", force=False, dry_run=dry_run)
        assert err.value.check == "tar-safety"
    assert not (tmp_path / "dest").exists() and not (tmp_path / "evil").exists()


# -- restoring safely ----------------------------------------------------------------------------


def test_restore_into_a_non_empty_directory_needs_force(tree, tmp_path):
    source = source_for("files")
    data, manifest = dump(source, target(tree), tmp_path)
    dest = tmp_path / "busy"
    write(dest / "keep.txt", b"someone's data")
    with pytest.raises(RestoreRefused, match=f"{dest} is not empty") as err:
        source.restore(io.BytesIO(data), manifest, dest, force=False, dry_run=False)
    assert "--force" in err.value.remedy and "empty" in err.value.remedy
    assert [p.name for p in dest.iterdir()] == ["keep.txt"]

    # With force, existing files are replaced, even read-only ones and symlinks that point
    # outside: the restore unlinks them instead of writing through them.
    victim = write(tmp_path / "victim", b"untouched")
    restored = restored_root(dest, tree)
    write(restored / "bin" / "run.sh", b"old", 0o400)
    (restored / "secret.key").symlink_to(victim)
    source.restore(io.BytesIO(data), manifest, dest, force=True, dry_run=False)
    assert victim.read_bytes() == b"untouched"
    assert (restored / "secret.key").read_bytes() == (tree / "secret.key").read_bytes()
    assert (restored / "bin" / "run.sh").read_bytes() == (tree / "bin" / "run.sh").read_bytes()
    assert (dest / "keep.txt").read_bytes() == b"someone's data"

    # Restoring the same backup over itself works too (read-only files, absolute symlinks).
    source.restore(io.BytesIO(data), manifest, dest, force=True, dry_run=False)


def test_dry_run_writes_nothing_and_lists_what_would_be_written(tree, tmp_path):
    source = source_for("files")
    data, manifest = dump(source, target(tree), tmp_path)
    dest = tmp_path / "new" / "restore"
    plan = source.restore(io.BytesIO(data), manifest, dest, force=False, dry_run=True)
    assert not (tmp_path / "new").exists()
    report = manifest["source"]
    assert plan["dry_run"] is True and plan["restored_to"] == str(dest)
    assert plan["would_write"] == [str(dest / e["path"]) for e in report["files"]]
    assert plan["files"] == report["file_count"] and plan["bytes"] == report["bytes"]
    assert plan["files"] + plan["dirs"] + plan["links"] == len(report["files"])

    # A dry run answers "what would this command do", including a refusal.
    write(tmp_path / "busy" / "x", b"x")
    with pytest.raises(RestoreRefused):
        source.restore(io.BytesIO(data), manifest, tmp_path / "busy", force=False, dry_run=True)


def test_a_device_the_record_does_not_list_is_refused_by_the_extractor_itself(tmp_path):
    """plan_restore refuses devices the record names; one only in the archive meets the per-member check."""
    data = crafted([("ok.txt", tarfile.REGTYPE, b"fine"), ("dev", tarfile.CHRTYPE, None)])
    record = {"source": {"files": scan_stream(io.BytesIO(data))[:1]}}
    with pytest.raises(VerificationFailed, match="'dev'.*special members are never restored") as err:
        source_for("files").restore(io.BytesIO(data), record, tmp_path / "dest", force=False, dry_run=False)
    assert err.value.check == "tar-safety" and not (tmp_path / "dest" / "dev").exists()


def test_a_stripped_restore_keeps_hard_links_and_refuses_one_to_a_member_left_out(tree, tmp_path):
    source = source_for("files")
    data, manifest = dump(source, target(tree), tmp_path)
    dest = tmp_path / "flat"
    result = source.restore(io.BytesIO(data), manifest, dest, force=False, dry_run=False, strip_source_path=True)
    assert (dest / "bin" / "start.sh").samefile(dest / "bin" / "run.sh") and result["links"] == 3
    assert stat.S_IMODE((dest / "secret.key").stat().st_mode) == 0o400

    outside = crafted([("srv/other", tarfile.REGTYPE, b"left out"), ("srv/app/link", tarfile.LNKTYPE, "srv/other")])
    record = {"source": {"roots": ["/srv/app"], "files": scan_stream(io.BytesIO(outside))}}
    with pytest.raises(VerificationFailed, match="a hard link to a member outside the stripped path") as err:
        source.restore(io.BytesIO(outside), record, tmp_path / "flat2", force=False, dry_run=False, strip_source_path=True)
    assert err.value.check == "tar-safety" and not (tmp_path / "flat2" / "link").exists()
