"""A new data directory from a stored base backup, set up to replay WAL to a moment.

Extraction streams the stored tar (tar_reader.py) in the layout its manifest names
(base_layout.py): the current one is the data directory itself; the old one holds
``base.tar``, unpacked into the directory, and ``pg_wal.tar``, into its ``pg_wal``.
Only plain files and directories
inside the tree are written, with no set-id bits and nothing writable by others (what
tarfile's ``data`` filter allows), so a crafted archive cannot write outside the
directory, create devices or link out of the tree.

The recovery settings go into ``postgresql.auto.conf``, which PostgreSQL reads last, so
they win over whatever the base's own ``postgresql.conf`` says. ``archive_mode = off``
above all: a restored copy, once promoted, must never push its WAL into the live
cluster's archive, where a second history would mix with the first.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import BinaryIO

from backup_tasks import defaults
from backup_tasks.errors import RestoreRefused, VerificationFailed
from backup_tasks.sources.postgres import base_layout, tar_reader
from backup_tasks.sources.postgres.base_layout import BASE, MANIFEST, WAL

RECOVERY_MARK = "# backup-tasks: recovery to a point in time"


def prepare(dest: Path, *, force: bool, dry_run: bool) -> bool:
    """Refuse a non-empty ``dest`` without ``force``; create it 0700. Returns whether it held anything."""
    occupied = dest.exists() and (not dest.is_dir() or any(dest.iterdir()))
    if occupied and not force:
        raise RestoreRefused(f"{dest} exists and is not empty; refusing to restore a data directory over it",
                             "give a new or empty directory, or pass --force to empty it first (stop any server using it)")
    if dry_run:
        return occupied
    if occupied:
        if dest.is_dir():
            for child in dest.iterdir():
                shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
        else:
            dest.unlink()
    dest.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(dest, 0o700)  # PostgreSQL refuses to start on a data directory others can read
    return occupied


def extract(plaintext: BinaryIO, dest: Path, report: dict) -> dict:
    """Unpack the base backup whose manifest ``source`` section is ``report`` into ``dest``; returns what was written."""
    single = base_layout.layout_of(report) == base_layout.SINGLE
    try:
        if single:
            return {"files": _unpack(plaintext, dest, "the base backup"), "wal_files_in_base": 0}
        counts = {BASE: 0, WAL: 0}
        for member, data in tar_reader.members(plaintext):
            if member.name == MANIFEST:
                (dest / MANIFEST).write_bytes(data.read())
                continue
            if member.name not in counts:
                raise VerificationFailed(f"unexpected member {member.name!r} in a physical base backup",
                                         "the stored archive is not one backup-tasks wrote; use another backup", check="physical-layout")
            into = dest if member.name == BASE else dest / "pg_wal"
            into.mkdir(mode=0o700, exist_ok=True)
            counts[member.name] = _unpack(data, into, member.name)
    except tar_reader.TarError as exc:
        raise VerificationFailed(f"the stored base backup is not a readable tar: {exc}",
                                 "the stored object is damaged; use another backup", check="physical-layout") from None
    return {"files": counts[BASE], "wal_files_in_base": counts[WAL]}


def _unpack(stream: BinaryIO, into: Path, archive: str) -> int:
    count = 0
    made: set[Path] = {into}  # directories known to exist: a data directory's thousand files need no mkdir each
    for m, content in tar_reader.members(stream):
        _refuse_unsafe(m, archive)
        _write(m, content, into, made)
        count += 1
    return count


def _write(m: tar_reader.Member, content: tar_reader.MemberReader, into: Path, made: set[Path]) -> None:
    """One checked member: what tarfile's "data" filter allows (no set-id bits, nothing writable by others)."""
    path = into / m.name
    if m.isdir():
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(path, (m.mode & 0o755) | 0o700)
        made.add(path)
        return
    if path.parent not in made:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        made.add(path.parent)
    # O_NOFOLLOW: nothing in the archive makes a link, and nothing outside the tree is ever written through one
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb", buffering=0) as out:  # unbuffered: the chunks are large, a buffer would only copy them
        while chunk := content.read(defaults.CHUNK_SIZE):
            view = memoryview(chunk)
            while view:
                view = view[out.write(view):]
        os.fchmod(fd, (m.mode & 0o755) | 0o600)
        os.utime(fd, (m.mtime, m.mtime))  # after the last write, which would set it again


def _refuse_unsafe(m: tar_reader.Member, archive: str) -> None:
    """Only plain files and directories inside the tree: a data directory holds nothing else (tablespace links are refused at backup)."""
    parts = Path(m.name).parts
    if m.name.startswith("/") or ".." in parts or not (m.isfile() or m.isdir()):
        raise VerificationFailed(f"{archive} holds {m.name!r}, which is not a plain file or directory inside the data directory",
                                 "the stored archive is not what pg_basebackup writes; do not use it", check="unsafe-member")


def write_recovery(dest: Path, *, restore_command: str, target_time: str | None, target_lsn: str | None = None) -> None:
    """recovery.signal plus the settings that make this copy replay, stop at the target, promote and never archive.

    A ``target_lsn`` stops replay just *before* the first record at or after it: the state
    of every commit written before that position, which is what a drill's counted point
    describes (counted_point.py).
    """
    lines = [RECOVERY_MARK,
             f"restore_command = '{_quote(restore_command)}'",
             "recovery_target_timeline = 'latest'",
             "archive_mode = 'off'",
             "archive_command = ''"]
    if target_time:
        lines += [f"recovery_target_time = '{_quote(target_time)}'",
                  "recovery_target_inclusive = 'true'"]
    elif target_lsn:
        lines += [f"recovery_target_lsn = '{_quote(target_lsn)}'",
                  "recovery_target_inclusive = 'false'"]
    lines.append("recovery_target_action = 'promote'")
    auto = dest / "postgresql.auto.conf"
    text = auto.read_text() if auto.exists() else ""
    text = text.split(RECOVERY_MARK, 1)[0]
    auto.write_text(text + ("" if not text or text.endswith("\n") else "\n") + "\n".join(lines) + "\n")
    os.chmod(auto, 0o600)
    signal = dest / "recovery.signal"
    signal.write_text("")
    os.chmod(signal, 0o600)


def _quote(value: str) -> str:
    return value.replace("'", "''")
