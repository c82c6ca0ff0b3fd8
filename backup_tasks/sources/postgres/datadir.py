"""A new data directory from a stored base backup, set up to replay WAL to a moment.

Extraction streams the outer tar (basebackup.py): ``base.tar`` into the directory,
``pg_wal.tar`` into its ``pg_wal``, with tarfile's ``data`` filter, so a crafted archive
cannot write outside the directory, create devices or link out of the tree.

The recovery settings go into ``postgresql.auto.conf``, which PostgreSQL reads last, so
they win over whatever the base's own ``postgresql.conf`` says. ``archive_mode = off``
above all: a restored copy, once promoted, must never push its WAL into the live
cluster's archive, where a second history would mix with the first.
"""

from __future__ import annotations

import os
import shutil
import tarfile
from pathlib import Path
from typing import BinaryIO

from backup_tasks import defaults
from backup_tasks.errors import RestoreRefused, VerificationFailed
from backup_tasks.sources.postgres.basebackup import BASE, MANIFEST, WAL

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


def extract(plaintext: BinaryIO, dest: Path) -> dict:
    """Unpack base.tar into ``dest`` and pg_wal.tar into ``dest/pg_wal``; returns what was written."""
    counts = {BASE: 0, WAL: 0}
    with tarfile.open(fileobj=plaintext, mode="r|", bufsize=defaults.CHUNK_SIZE) as outer:
        for member in outer:
            if member.name == MANIFEST:
                (dest / MANIFEST).write_bytes(outer.extractfile(member).read())
                continue
            if member.name not in counts:
                raise VerificationFailed(f"unexpected member {member.name!r} in a physical base backup",
                                         "the stored archive is not one backup-tasks wrote; use another backup", check="physical-layout")
            into = dest if member.name == BASE else dest / "pg_wal"
            into.mkdir(mode=0o700, exist_ok=True)
            # tarfile's defaults (10 KiB reads, 16 KiB copies) made extraction several times slower than tar -x
            with tarfile.open(fileobj=outer.extractfile(member), mode="r|", bufsize=defaults.CHUNK_SIZE) as inner:
                inner.copybufsize = defaults.CHUNK_SIZE
                for m in inner:
                    _refuse_unsafe(m, member.name)
                    if _HAS_FILTER:
                        inner.extract(m, into, filter="data")
                    else:  # Python before 3.11.4: the checks above are the whole filter
                        inner.extract(m, into)
                    counts[member.name] += 1
    return {"files": counts[BASE], "wal_files_in_base": counts[WAL]}


#: tarfile's extraction filters exist from Python 3.11.4 on
_HAS_FILTER = hasattr(tarfile, "data_filter")


def _refuse_unsafe(m: tarfile.TarInfo, archive: str) -> None:
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
