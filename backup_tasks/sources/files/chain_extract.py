"""Restoring one point of a chain of files backups from its tree listing.

The listing (tree_listing.py) says what the tree held at that point and which backup's
archive holds each file's bytes. The restore therefore writes exactly the listed paths:
files deleted since the full are absent because they are not listed, a renamed file is
written under its new name from the member it was stored as, and modes, mtimes (ns)
and symlinks come from the listing, not from whichever archive
carried the bytes. Paths that were one file (same device, inode and sha256, with
``nlink`` above one) come back as hard links: the first is written, the others are
linked to it, whichever backups' archives their bytes were stored in.

Order, so nothing is ever written through a link: directories first (private 0700
until the end), then each holder's archive read once, front to back, writing the
members wanted from it, then the hard links, then symlinks, then the directories' own modes and mtimes,
deepest first. Every file's bytes are hashed as they are written and must match the
listing's sha256. What is wanted from each archive lives in an SQLite index in the
work directory, not in memory, so a tree of any size restores with flat memory.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import BinaryIO, Callable, ContextManager, Iterable

from backup_tasks.errors import PermanentError, VerificationFailed
from backup_tasks.sources.files.member_writer import inside as _inside, refuse as _refuse, unsafe_name as _unsafe_name
from backup_tasks.sources.files.tarstream import TarScanner, TarStreamError
from backup_tasks.sources.files.tree_listing import decode, encode, key, read_listing

_REMEDY = "do not trust this backup; restore from another copy; the destination may hold a partial restore, delete it"


def selected(path: str, wanted: tuple[str, ...]) -> bool:
    """Whether ``path`` is one of ``wanted``, inside one, or a directory leading to one."""
    if not wanted:
        return True
    return any(path == w or path.startswith(w + "/") or w.startswith(path + "/") for w in wanted)


def normalise(paths: Iterable[str]) -> tuple[str, ...]:
    """``--path`` values as listing paths: original absolute paths or member names, either works."""
    return tuple(p.strip("/") for p in paths if p.strip("/"))


class ChainPlan:
    """A listing read once into an on-disk index: what to write, and from which backup."""

    def __init__(self, listing: Path, workdir: Path, paths: tuple[str, ...] = ()) -> None:
        self.db = sqlite3.connect(str(Path(workdir) / "restore-index.sqlite"))
        self.db.execute("PRAGMA journal_mode=OFF")
        self.db.execute("PRAGMA synchronous=OFF")
        # Paths and member names as their original bytes: names need not be UTF-8, SQLite text must be.
        # lead: for the second and later names of one file, the seq of the first, which they link to
        self.db.execute("CREATE TABLE e (seq INTEGER PRIMARY KEY, path BLOB, type TEXT, holder TEXT, member BLOB,"
                        " done INT DEFAULT 0, body TEXT, grp TEXT, lead INT)")
        rows = ((key(e["path"]), e["type"], e.get("in"), key(e.get("member", e["path"])) if e["type"] == "file" else None,
                 encode(e).decode("utf-8"), _link_group(e))
                for e in read_listing(listing) if selected(e["path"], paths))
        self.db.executemany("INSERT INTO e (path, type, holder, member, body, grp) VALUES (?, ?, ?, ?, ?, ?)", rows)
        self.db.execute("CREATE INDEX by_member ON e (holder, member)")
        self.db.execute("CREATE INDEX by_group ON e (grp) WHERE grp IS NOT NULL")
        self.db.execute("UPDATE e SET lead = (SELECT min(f.seq) FROM e AS f WHERE f.grp = e.grp) WHERE grp IS NOT NULL")
        self.db.execute("UPDATE e SET lead = NULL WHERE lead = seq")
        self.db.commit()
        # '0' follows '/' in byte order: [p + "/", p + "0") is everything below p
        self.missing_paths = [p for p in paths if not self.db.execute(
            "SELECT 1 FROM e WHERE path = ? OR (path >= ? AND path < ?) LIMIT 1",
            (key(p), key(p + "/"), key(p + "0"))).fetchone()]

    def holders(self) -> list[tuple[str, int, int]]:
        """(backup id, files, bytes) for every backup whose archive holds wanted bytes, oldest id first."""
        q = ("SELECT holder, count(*), sum(json_extract(body, '$.size')) FROM e WHERE type = 'file' AND lead IS NULL"
             " GROUP BY holder ORDER BY holder")
        return [(h, n, int(b or 0)) for h, n, b in self.db.execute(q)]

    def entries(self, kind: str | None = None, *, reverse: bool = False) -> Iterable[dict]:
        q = "SELECT body FROM e" + (" WHERE type = ?" if kind else "") + (" ORDER BY seq DESC" if reverse else " ORDER BY seq")
        for (body,) in self.db.execute(q, (kind,) if kind else ()):
            yield decode(body)

    def wanted_from(self, holder: str, member: str) -> list[tuple[int, dict]]:
        return [(seq, decode(b)) for seq, b in self.db.execute(
            "SELECT seq, body FROM e WHERE holder = ? AND member = ? AND type = 'file' AND lead IS NULL", (holder, key(member)))]

    def links(self) -> Iterable[tuple[dict, str]]:
        """(entry, path of the first name) for every later name of a file with several."""
        q = "SELECT e.body, f.path FROM e JOIN e AS f ON f.seq = e.lead WHERE e.lead IS NOT NULL ORDER BY e.seq"
        for body, first in self.db.execute(q):
            yield decode(body), first.decode("utf-8", "surrogateescape")

    def mark_done(self, seqs: list[int]) -> None:
        self.db.executemany("UPDATE e SET done = 1 WHERE seq = ?", ((s,) for s in seqs))

    def not_done(self, limit: int = 5) -> list[tuple[str, str]]:
        rows = self.db.execute("SELECT path, holder FROM e WHERE type = 'file' AND done = 0 AND lead IS NULL LIMIT ?", (limit,))
        return [(p.decode("utf-8", "surrogateescape"), h) for p, h in rows]

    def close(self) -> None:
        self.db.close()


def _link_group(entry: dict) -> str | None:
    """What the names of one file share; the sha256 too, so two files that only shared an inode number stay two."""
    if entry["type"] != "file" or entry.get("nlink", 1) < 2:
        return None
    return f"{entry.get('dev')}:{entry.get('ino')}:{entry.get('sha256')}"


def dry_run(plan: ChainPlan, dest: Path) -> dict:
    """What a restore would write, and from which backup each file's bytes come."""
    out = {"files": 0, "dirs": 0, "links": 0, "bytes": 0, "would_write": [], "files_from": []}
    for entry in plan.entries():
        _check_name(entry, str(dest))
        out["would_write"].append(str(dest / entry["path"]))
        key = {"file": "files", "dir": "dirs"}.get(entry["type"], "links")
        out[key] += 1
        if entry["type"] == "file":
            out["bytes"] += entry["size"]
            out["files_from"].append({"path": entry["path"], "from": entry["in"], **({"member": entry["member"]}
                                                                                    if "member" in entry else {})})
    out["from_backups"] = [{"backup_id": h, "files": n, "bytes": b} for h, n, b in plan.holders()]
    return out


def _check_name(entry: dict, dest: str) -> None:
    if reason := _unsafe_name(entry["path"]) or (_unsafe_name(entry.get("member", "")) if entry["type"] == "file" else ""):
        raise _refuse(entry["path"], dest, reason)
    if entry["type"] not in ("file", "dir", "symlink"):
        raise _refuse(entry["path"], dest, f"{entry['type']} entries are never restored")


def restore(plan: ChainPlan, dest: Path, open_archive: Callable[[str], ContextManager[BinaryIO]]) -> dict:
    """Write the planned tree under ``dest`` (an empty private directory); return counts.

    ``open_archive(backup_id)`` yields that backup's plaintext tar stream; the caller
    checks its digests against the signed manifest when the context closes.
    """
    real = os.path.realpath(dest)
    counts = {"files": 0, "dirs": 0, "links": 0, "bytes": 0, "from_backups": []}
    for entry in plan.entries("dir"):
        _check_name(entry, real)
        path = _checked_path(entry, real)
        if entry["path"] != ".":
            os.makedirs(path, mode=0o700, exist_ok=True)
        counts["dirs"] += 1
    for holder, files, size in plan.holders():
        with open_archive(holder) as stream:
            _extract_from(plan, holder, stream, real)
        counts["from_backups"].append({"backup_id": holder, "files": files, "bytes": size})
    if left := plan.not_done():
        raise VerificationFailed(
            "the chain's archives lack files the listing names: "
            + ", ".join(f"{p!r} (in backup {h})" for p, h in left), _REMEDY, check="chain-content")
    for entry, first in plan.links():
        _check_name(entry, real)
        os.link(_checked_path({"path": first}, real), _checked_path(entry, real), follow_symlinks=False)
    for entry in plan.entries("file"):
        _set_attrs(os.path.join(real, entry["path"]), entry)
        counts["files"] += 1
        counts["bytes"] += entry["size"]
    for entry in plan.entries("symlink"):
        _check_name(entry, real)
        path = _checked_path(entry, real)
        os.symlink(entry["link"], path)
        _set_attrs(path, entry)
        counts["links"] += 1
    for entry in plan.entries("dir", reverse=True):  # deepest last-written first, as tar does
        _set_attrs(os.path.join(real, entry["path"]), entry)
    return counts


def _checked_path(entry: dict, real_dest: str, resolved: dict | None = None) -> str:
    """Where ``entry`` goes: its directory resolved, and refused if that leads outside ``real_dest``.

    ``resolved``: the last directory resolved, reused while the archives are written. Then
    no symlink exists yet below the destination (they come last) and nothing but files is
    created, so a directory resolves the same way twice; an archive's members come
    directory by directory, so this spares most of the realpath calls (one lstat a component).
    """
    directory = os.path.join(real_dest, os.path.dirname(entry["path"]))
    if resolved is not None and resolved.get("dir") == directory:
        return os.path.join(resolved["real"], os.path.basename(entry["path"]))
    parent = os.path.realpath(directory)
    if not _inside(parent, real_dest):
        raise _refuse(entry["path"], real_dest, f"its directory resolves to {parent}, outside the destination")
    if resolved is not None:
        resolved.update(dir=directory, real=parent)
    return os.path.join(parent, os.path.basename(entry["path"]))


def _extract_from(plan: ChainPlan, holder: str, stream: BinaryIO, real: str) -> None:
    """Read one archive front to back; write each wanted member's bytes to every path that wants them.

    The archive is parsed by the stream parser a full's restore uses (``TarScanner``), which
    hashes each member's content as it passes; ``tarfile``'s header decoding was nearly half
    of a chain restore's time. The stream is read to its end: the caller checks its digests.
    """
    sink = _ChainSink(plan, holder, real)
    scanner = TarScanner(lambda entry: None, sink=sink)  # an on_entry callback: no listing kept in memory
    try:
        try:
            scanner.read_all(stream)
            plan.mark_done(sink.done)
        finally:
            sink.close()
    except TarStreamError as exc:
        raise VerificationFailed(f"cannot read the archive of backup {holder}: {exc.message}", _REMEDY,
                                 check="tar-structure") from None
    except OSError as exc:
        raise PermanentError(f"restore into {real} failed writing from backup {holder}: {exc}",
                             "check free space and permissions at the destination") from None


class _ChainSink:
    """The scanner's ``MemberSink``: a wanted regular member's bytes go to every path that wants them.

    Only regular members are written: the plan links the later names of a file itself, so
    the archive's hard links (and its directories and symlinks: the listing gives those)
    pass unwritten. Each target is created new (``O_EXCL|O_NOFOLLOW``), never through a link.
    """

    def __init__(self, plan: ChainPlan, holder: str, real: str) -> None:
        self.plan, self.holder, self.real = plan, holder, real
        self.resolved: dict = {}
        self.done: list[int] = []
        self._fds: list[int] = []
        self._wanted: list[tuple[int, dict]] = []

    def begin(self, entry: dict, pax: dict[str, str]) -> None:
        if entry["type"] != "file" or not (wanted := self.plan.wanted_from(self.holder, entry["path"])):
            return
        for _, e in wanted:
            _check_name(e, self.real)
        paths = [_checked_path(e, self.real, self.resolved) for _, e in wanted]
        self._wanted = wanted
        for path in paths:
            self._fds.append(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600))

    def data(self, chunk: memoryview) -> None:
        for fd in self._fds:
            view = chunk
            while view:
                view = view[os.write(fd, view):]

    def end(self, entry: dict) -> None:
        if not self._wanted:
            return
        self.close()
        wanted, self._wanted = self._wanted, []
        for _, e in wanted:  # the scanner hashed the bytes as they passed
            if entry["sha256"] != e["sha256"]:
                raise VerificationFailed(f"content of {e['path']!r} from backup {self.holder} does not match its listed sha256",
                                         _REMEDY, check="file-sha256")
        self.done.extend(seq for seq, _ in wanted)
        if len(self.done) >= 1000:  # one statement a thousand files, not one a file
            self.plan.mark_done(self.done)
            self.done.clear()

    def close(self) -> None:
        fds, self._fds = self._fds, []
        for fd in fds:
            os.close(fd)


def _set_attrs(path: str, entry: dict) -> None:
    # Owners are recorded (uid, gid) but not applied, like a full restore: the restore host's
    # users need not be the backed-up host's.
    if entry["type"] != "symlink":
        os.chmod(path, entry["mode"])
    os.utime(path, ns=(entry["mtime_ns"], entry["mtime_ns"]), follow_symlinks=False)
