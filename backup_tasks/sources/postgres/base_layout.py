"""The two ways a physical base backup has been stored, named by the manifest's ``source.format``.

``SINGLE`` (current): the one tar ``pg_basebackup -D - -Ft -X none`` writes to stdout,
the data directory itself with PostgreSQL's ``backup_manifest`` appended as its last
member. ``age -d | zstd -d | tar -x -C DATADIR`` gives a data directory; its WAL comes
from the archive (``restore_command``), as for every restore to a moment.

``OUTER`` (backups taken before): a tar of the three files ``pg_basebackup -Ft -X
stream`` wrote into a work directory, ``backup_manifest``, ``base.tar`` and
``pg_wal.tar``, in that order. Such backups stay in stores for as long as retention
keeps them, so verify and restore still read them.

The format string is what readers go by, never the archive's first bytes: a backup
whose manifest names neither is refused rather than guessed at.
"""

from __future__ import annotations

from backup_tasks.errors import VerificationFailed

MANIFEST = "backup_manifest"
BASE = "base.tar"
WAL = "pg_wal.tar"
OUTER_MEMBERS = (MANIFEST, BASE, WAL)
OUTER = "tar of backup_manifest, base.tar, pg_wal.tar (pg_basebackup -Ft -X stream)"
SINGLE = "tar of the data directory with backup_manifest (pg_basebackup -D - -Ft -X none)"


def layout_of(report: dict) -> str:
    """``SINGLE`` or ``OUTER``, from a manifest's ``source`` section."""
    fmt = report.get("format")
    if fmt in (SINGLE, OUTER):
        return fmt
    raise VerificationFailed(f"a physical base backup of format {fmt!r}, which this version does not read",
                             "restore it with the backup-tasks version that wrote it, or by hand (age -d | zstd -d | tar -x)",
                             check="physical-layout")
