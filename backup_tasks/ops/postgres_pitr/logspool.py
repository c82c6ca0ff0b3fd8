"""The host's spool of archived logs: where a log file is made durable before it is shipped.

A database's archive hook (PostgreSQL's ``archive_command``) must answer quickly and
only say "done" once the file cannot be lost; it must not wait on a network. So a push
copies the file into a private directory on this host (0700, one per target), fsyncs
the file and the directory, and returns. The shipping task uploads from there and
removes a file only after it is stored and recorded.

What the spool remembers. After shipping, a one-line ``shipped/<name>`` ledger entry
keeps the file's sha256, so a second push of the same name is checked against what was
stored without asking the catalog (a database may re-archive after a crash: same bytes
is success; other bytes under a stored name is a conflict, refused, and left for the
shipping task to alert on: the archive keeps the first).

Nothing here ever deletes a log that was not shipped: a spool over its size limit is
alerted, never trimmed.
"""

from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from backup_tasks import defaults
from backup_tasks.ops import host_lock
from backup_tasks.errors import PermanentError
from backup_tasks.stages.digest import HashingWriter, file_digest
from backup_tasks.storage.local_files import fsync_dir

SHIPPED = "shipped"
CONFLICTS = "conflicts"
LOCK = "ship.lock"


class LogConflict(PermanentError):
    """A log file arrived under a name already archived with other contents; the archive keeps the first."""


@dataclass(frozen=True)
class Spooled:
    name: str
    path: Path
    size: int
    #: when the server handed the file over (its durable copy's mtime)
    closed_at: datetime


class Spool:
    """One target's spool directory; every method works on local files only."""

    def __init__(self, root: Path, target: str) -> None:
        self.dir = Path(root) / target
        self.target = target

    def _ensure(self) -> None:
        for path in (self.dir.parent, self.dir, self.dir / SHIPPED, self.dir / CONFLICTS):
            path.mkdir(mode=0o700, exist_ok=True)
        if self.dir.stat().st_mode & 0o077:  # WAL holds every row written: only its owner may read the spool
            os.chmod(self.dir, 0o700)

    # -- the archive hook's side -----------------------------------------------------------

    def push(self, source: Path, name: str | None = None) -> str:
        """Make ``source`` durable in the spool under ``name``; "spooled", or "duplicate" when the same bytes are already here or shipped.

        LogConflict when other bytes are already spooled or shipped under that name.
        """
        name = name or source.name
        if "/" in name or name.startswith("."):
            raise PermanentError(f"'{name}' is not a log file name", "pass the file PostgreSQL names in %p")
        self._ensure()
        # One read of the segment: copied into a private temp file while hashed, so the hash
        # is of exactly the bytes the spool keeps; only then compared with what came before.
        tmp = self.dir / f".{name}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "wb") as raw, open(source, "rb") as src:
                out = HashingWriter(raw)
                shutil.copyfileobj(src, out, defaults.CHUNK_SIZE)
                raw.flush()
                os.fsync(raw.fileno())
            sha = out.sha256
            final = self.dir / name
            earlier = file_digest(final)[1] if final.exists() else self.shipped_sha256(name)
            if earlier is not None:
                if earlier == sha:
                    tmp.unlink()
                    return "duplicate"
                self.record_conflict(name, earlier, sha)
                raise LogConflict(f"{name} of target '{self.target}' was already archived with sha256 {earlier[:16]}…, "
                                  f"now offered with {sha[:16]}…; the archive keeps the first and refuses this one",
                                  "two servers archive into one target, or a restored copy archives into the live archive: "
                                  "stop the second one, then delete the conflicts/ entry in the spool once resolved")
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        fsync_dir(self.dir)
        return "spooled"

    def record_conflict(self, name: str, first: str, second: str) -> None:
        path = self.dir / CONFLICTS / name
        path.write_text(json.dumps({"name": name, "archived_sha256": first, "offered_sha256": second,
                                    "at": datetime.now(timezone.utc).isoformat()}))
        os.chmod(path, 0o600)

    # -- the shipping task's side -----------------------------------------------------------

    def ready(self) -> list[Spooled]:
        """Files waiting to be shipped, in name order (a log's own order)."""
        if not self.dir.is_dir():
            return []
        out = []
        for path in sorted(self.dir.iterdir()):
            if path.is_file() and not path.name.startswith(".") and path.name != LOCK:
                st = path.stat()
                out.append(Spooled(path.name, path, st.st_size, datetime.fromtimestamp(st.st_mtime, timezone.utc)))
        return out

    def size(self) -> int:
        return sum(s.size for s in self.ready())

    def conflicts(self) -> list[dict]:
        folder = self.dir / CONFLICTS
        return [json.loads(p.read_text()) for p in sorted(folder.iterdir())] if folder.is_dir() else []

    def shipped_sha256(self, name: str) -> str | None:
        path = self.dir / SHIPPED / name
        return path.read_text().strip() if path.exists() else None

    def mark_shipped(self, item: Spooled, sha256: str) -> None:
        """Remember what was stored, then drop the spooled copy (only ever after it is stored and recorded)."""
        entry = self.dir / SHIPPED / item.name
        tmp = entry.with_name(f".{item.name}.tmp")
        tmp.write_text(sha256 + "\n")
        os.replace(tmp, entry)
        item.path.unlink(missing_ok=True)
        fsync_dir(self.dir)

    def forget_shipped(self, older_than: datetime) -> int:
        """Drop ledger entries written before ``older_than``; the catalog stays the check for older names."""
        folder, cutoff, gone = self.dir / SHIPPED, older_than.timestamp(), 0
        if folder.is_dir():
            for path in folder.iterdir():
                if path.stat().st_mtime < cutoff:
                    path.unlink(missing_ok=True)
                    gone += 1
        return gone

    @contextmanager
    def exclusive(self) -> Iterator[bool]:
        """Hold the spool's shipping lock if nobody else does; yields whether this caller got it."""
        self._ensure()
        with host_lock.exclusive(self.dir / LOCK) as mine:
            yield mine
