"""Which files of a tree changed since the parent backup, and the tree listing that results.

A file's content is taken as unchanged when its (size, mtime_ns, inode) match the
parent's listing, the way restic and borg decide. ctime is compared too, but a change of
ctime alone (chmod, chown, a new hard link) only means new metadata: it is recorded
from ``lstat`` and the content is not read again. The device number is deliberately
not compared: it changes between snapshot mounts and NFS remounts while the files do
not, and comparing it would turn every such backup into a full. With ``rehash`` every
file is read and its sha256 compared instead, for filesystems whose metadata cannot be
trusted.

Why a merge join: the walk and the parent's listing are both in tree order
(``tree_key``), so the two are read side by side, each path meeting its parent entry
without a lookup, and an unchanged file's line is the parent's with its device number
and ``change`` updated. Looking every path up in an index of the parent cost some
50 µs a path; this costs a few (a 100k-file tree: about 1 s instead of 4). A listing
that is not in tree order (written before listings were sorted, with roots not in
order) is sorted once on disk first.

A path absent from the parent whose (inode, size, mtime) matches a parent file that is
gone from its own path is a rename: it is recorded as a reference to the bytes the
parent chain already holds. Both sides are only known once the join is done, so new
files wait in a side file until then; only gone and new paths are indexed, so the cost
follows the change, not the tree.

Two passes keep memory flat. The first (here) stats every path and writes a draft line
per path to a file in the work directory, while the paths whose content must be
archived go to tar's member list. The second, after tar (final_listing.py), rewrites
the draft into the final listing, adding the sha256 the tar scan measured for each
archived file. In an incremental most draft lines are final already (the parent's,
carried over); a side file marks the few the second pass must settle, so it copies the
rest in blocks.

A large incremental's first pass is cut in two at a directory's entries: the second half
is walked and joined by a child process (split_join.py) while this one does the first,
and its outputs are put after these, so the files are those one join writes.
"""

from __future__ import annotations

import hashlib
import heapq
import os
import sqlite3
import stat
import struct
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Iterator, Protocol

import orjson

from backup_tasks.errors import SourceError
from backup_tasks.sources.files.parent_listing import Unsorted, in_order, sorted_on_disk
from backup_tasks.sources.files.tar_batches import Linked
from backup_tasks.sources.files.tree_listing import decode, encode, tree_key

CHANGES = ("new", "modified", "metadata", "renamed", "unchanged")

DRAFT, MARKS, _PENDING, GONE, RENAMED, _NEW_MEMBERS = (
    "draft.jsonl", "draft-marks.bin", "pending-new.jsonl", "gone.sqlite", "renamed.jsonl", "new-members.nul")
#: the hard-linked names the walk stated (tar_batches.Linked), so cutting the member list needs no second lstat
LINKED = "linked.bin"
#: a draft line the second pass settles: its offset in the draft, and why ("?": its sha256 is the tar scan's; "N": maybe a rename)
MARK = struct.Struct("<Qc")
BUFFER = 1 << 20


@dataclass(frozen=True)
class Chain:
    """What a files dump needs to know about its place in a chain of backups.

    ``backup_id``: this backup, named in the listing as the holder of what it archives.
    ``parent_listing``: a local copy of the parent's listing, or None for a full.
    ``listing_out``: where the dump writes this backup's listing.
    """

    backup_id: str
    listing_out: Path
    parent_listing: Path | None = None
    rehash: bool = False


def member_name(path: str) -> str:
    """The tar member name of an absolute path (tar runs with -C /)."""
    return path.lstrip("/") or "."


def _metadata(name: str, path: str, st: os.stat_result) -> dict:
    # Once per path of the tree: each field read once, the dict built in one go, the keys in the
    # listing's order (path .. mtime, then type and size, then link or nlink).
    mode, mtime_ns = st.st_mode, st.st_mtime_ns
    seconds, nanos = divmod(mtime_ns, 1_000_000_000)
    kind = mode & 0o170000  # stat.S_IFMT
    if kind == stat.S_IFDIR:
        kind, size = "dir", 0
    elif kind == stat.S_IFLNK:
        kind, size = "symlink", 0
    else:
        kind, size = "file", st.st_size
    entry = {"path": name, "mode": mode & 0o7777, "uid": st.st_uid, "gid": st.st_gid,
             "mtime_ns": mtime_ns, "ctime_ns": st.st_ctime_ns, "ino": st.st_ino, "dev": st.st_dev,
             # the same mtime as text: jq reads numbers as doubles, which lose the nanoseconds
             "mtime": f"{seconds}.{nanos:09d}", "type": kind, "size": size}
    if kind == "symlink":
        entry["link"] = os.readlink(path)
    elif kind == "file" and st.st_nlink > 1:  # one file under several names: restored as hard links
        entry["nlink"] = st.st_nlink
    return entry


def _sha256(path: str) -> str | None:
    try:
        with open(path, "rb") as fh:
            return hashlib.file_digest(fh, "sha256").hexdigest()
    except FileNotFoundError:
        return None


def _carry(entry: dict, holder: dict, change: str) -> dict:
    """Point ``entry`` at the bytes ``holder`` (a parent entry) already has stored."""
    entry["sha256"] = holder["sha256"]
    entry["in"] = holder["in"]
    member = holder.get("member", holder["path"])
    if member != entry["path"]:
        entry["member"] = member
    entry["change"] = change
    return entry


def classify(entry: dict, before: dict | None, path: str, rehash: bool) -> bool:
    """Fill ``entry['change']`` (and the content reference when carried); True if its content must be archived.

    ``before``: the parent's entry at the same path, if any.
    """
    if entry["type"] != "file":
        if before is None:
            entry["change"] = "new"
        elif before["type"] != entry["type"] or before.get("link") != entry.get("link"):
            entry["change"] = "modified"
        else:
            entry["change"] = "unchanged" if before.get("ctime_ns") == entry["ctime_ns"] else "metadata"
        return False
    if before is not None and before["type"] == "file" and before.get("sha256"):
        if rehash:
            same = _sha256(path) == before["sha256"]
        else:
            same = (before["size"], before["mtime_ns"], before["ino"]) == (entry["size"], entry["mtime_ns"], entry["ino"])
        if same:
            _carry(entry, before, "unchanged" if before.get("ctime_ns") == entry["ctime_ns"] and not _meta_moved(before, entry)
                   else "metadata")
            return False
    entry["change"] = "new" if before is None else "modified"
    return True


def _meta_moved(before: dict, entry: dict) -> bool:
    return any(before.get(k) != entry[k] for k in ("mode", "uid", "gid"))


class _Renames:
    """Parent files gone from their path (where a new path's bytes may be), then the renames found.

    The renames go to a file of their own, in the order they are resolved: the new paths'
    tree order, which is the draft's, so the second pass reads it in step with the draft.
    """

    def __init__(self, workdir: Path) -> None:
        self.path, self.renamed_path = workdir / GONE, workdir / RENAMED
        self.path.unlink(missing_ok=True)
        self.renamed_path.unlink(missing_ok=True)
        self.db: sqlite3.Connection | None = None
        self._renamed: BinaryIO | None = None
        self.gone = 0
        self._indexed = False

    def _open(self) -> sqlite3.Connection:
        if self.db is None:
            self.db = sqlite3.connect(str(self.path))
            self.db.execute("PRAGMA journal_mode=OFF")
            self.db.execute("CREATE TABLE gone (ino INT, size INT, mtime_ns INT, line BLOB)")
        return self.db

    def add_gone(self, entry: dict) -> None:
        self.gone += 1
        if entry["type"] == "file" and entry.get("sha256"):
            self._open().execute("INSERT INTO gone VALUES (?, ?, ?, ?)",
                                 (entry["ino"], entry["size"], entry["mtime_ns"], encode(entry)))

    def resolve(self, pending: dict) -> bool:
        """Record ``pending`` (path, ino, size, mtime_ns of a new file) as renamed if a gone file matches."""
        if self.db is None:
            return False
        if not self._indexed:  # built once every gone file is in: cheaper than keeping it up to date
            self.db.execute("CREATE INDEX by_content ON gone (ino, size, mtime_ns)")
            self._indexed = True
        row = self.db.execute("SELECT line FROM gone WHERE ino = ? AND size = ? AND mtime_ns = ? LIMIT 1",
                              (pending["ino"], pending["size"], pending["mtime_ns"])).fetchone()
        if row is None:
            return False
        if self._renamed is None:
            self._renamed = open(self.renamed_path, "wb", buffering=BUFFER)
        self._renamed.write(encode(_carry({"path": pending["path"]}, decode(row[0]), "renamed")) + b"\n")
        return True

    def close(self) -> None:
        if self.db is not None:
            self.db.close()
        if self._renamed is not None:
            self._renamed.close()


class Rest(Protocol):
    """The rest of the tree (from tree key ``key`` on), joined elsewhere: split_join.OtherHalf."""

    key: str

    def finish(self, out: Outputs, gone: Callable[[dict], None]) -> dict: ...

    def stop(self) -> None: ...


def first_pass(paths: Iterable[str], chain: Chain, workdir: Path, member_list: Path, *, full: bool,
               walk_again: Callable[[], Iterable[str]] | None = None, rest: Rest | None = None) -> dict:
    """Stat every path; write the draft listing and tar's member list; return counts.

    A full archives every path (as it always has, so standard tools restore it alone);
    an incremental archives only the regular files whose content is new or changed.
    ``paths`` must come in tree order, the order of the listing: a gathered list (include
    patterns, overlapping roots) is sorted here in place; the walk's stream is in that
    order already (the join checks it), so a million paths are never held in memory.
    ``walk_again`` gives a stream anew, for the rare parent listing found out of tree
    order part-way through the join.
    ``rest``: the paths from ``rest.key`` on are joined by another process, whose outputs
    follow these; ``paths`` then ends before that key. It is stopped whatever happens.
    """
    if isinstance(paths, list):
        paths.sort(key=lambda p: tree_key(member_name(p)))
    workdir = Path(workdir)
    if chain.parent_listing is None:
        return _join(paths, iter(()), chain, workdir, member_list, full=full, has_parent=False)
    try:
        if rest is not None:
            try:
                return _join(paths, in_order(chain.parent_listing, stop=rest.key), chain, workdir, member_list,
                             full=full, has_parent=True, second=rest.finish)
            finally:
                rest.stop()
        return _join(paths, in_order(chain.parent_listing), chain, workdir, member_list, full=full, has_parent=True)
    except Unsorted:
        # An older listing (roots not in order): sorted once on disk, and the join starts over, in one process.
        if not isinstance(paths, list):
            if walk_again is None:
                raise SourceError("the parent listing is out of tree order and the walk cannot start again",
                                  "this is a bug in backup-tasks; report it, and run a full backup meanwhile") from None
            paths = walk_again()
        return _join(paths, sorted_on_disk(chain.parent_listing, workdir), chain, workdir, member_list, full=full,
                     has_parent=True)


def _join(paths: Iterable[str], parent: Iterator[tuple[str, dict]], chain: Chain, workdir: Path, member_list: Path, *,
          full: bool, has_parent: bool, second: Callable[[Outputs, Callable[[dict], None]], dict] | None = None) -> dict:
    """The join of the walk and the parent's listing, then the renames found and the new files put in the member list.

    ``second``: waits for the other half of a split join (split_join.py), puts its
    outputs after this half's and its gone entries with this half's (a directory renamed
    from one half into the other is still a rename), and returns its counts; None when
    this join is the whole tree.
    """
    renames = _Renames(workdir)
    try:
        with Outputs.created(workdir, member_list, workdir / _PENDING) as out:
            counts = scan(paths, parent, chain, out, renames.add_gone, full=full, has_parent=has_parent)
            if second is not None:
                for name, value in second(out, renames.add_gone).items():
                    counts[name] += value
        added = 0
        with open(workdir / _NEW_MEMBERS, "wb", buffering=BUFFER) as new_members:
            for line in lines(workdir / _PENDING):
                new = decode(line)
                if renames.resolve(new):
                    counts["renamed"] += 1
                else:
                    counts["new"] += 1
                    added += 1
                    new_members.write(os.fsencode(new["path"]) + b"\0")
    finally:
        renames.close()
    if has_parent:
        counts["deleted"] = renames.gone  # a renamed file's old path too: it no longer exists
        if added:
            _merge_members(member_list, workdir / _NEW_MEMBERS)
    return counts


def _draft_line(entry: dict, dumps=orjson.dumps, newline=orjson.OPT_APPEND_NEWLINE) -> bytes:
    """One draft line: orjson's (the common case), or the listing's own encoding for a name that is not UTF-8."""
    try:
        return dumps(entry, option=newline)
    except TypeError:
        return encode(entry) + b"\n"


@dataclass(frozen=True)
class Outputs:
    """Where a scan writes: the draft, its marks, tar's member list, the new files and the hard-linked names."""

    draft: BinaryIO
    marks: BinaryIO
    members: BinaryIO
    pending: BinaryIO
    linked: BinaryIO

    @classmethod
    @contextmanager
    def created(cls, workdir: Path, members: Path, pending: Path) -> Iterator["Outputs"]:
        """The draft, its marks and the hard-linked names in ``workdir``, tar's member list at ``members``, the new files at ``pending``."""
        with open(workdir / DRAFT, "wb", buffering=BUFFER) as draft, \
             open(workdir / MARKS, "wb", buffering=BUFFER) as marks, \
             open(members, "wb", buffering=BUFFER) as members_out, \
             open(pending, "wb", buffering=BUFFER) as pending_out, \
             open(workdir / LINKED, "wb", buffering=BUFFER) as linked:
            yield cls(draft, marks, members_out, pending_out, linked)


def scan(paths: Iterable[str], parent: Iterator[tuple[str, dict]], chain: Chain, out: Outputs,
         gone: Callable[[dict], None], *, full: bool, has_parent: bool) -> dict:
    """Stat each path, meet it with its parent entry, and write its draft line; counts (new files not yet counted).

    ``gone``: takes each parent entry the walk did not meet (deleted, or renamed away).
    The marks' offsets count from the first byte this scan writes to the draft: the second
    half of a split join writes a draft of its own, put after the first's.
    """
    counts = dict.fromkeys(CHANGES, 0)
    rehash, backup_id = chain.rehash, chain.backup_id
    lstat, S_ISREG, S_IMODE = os.lstat, stat.S_ISREG, stat.S_IMODE
    trust_metadata = not rehash
    # os.fsencode's own steps, without its Python-level checks on every path of the tree
    fs_encoding, fs_errors = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()
    unchanged = offset = 0
    draft, marks, members, pending = out.draft, out.marks, out.members, out.pending
    linked = Linked(out.linked)
    pk, before = next(parent, (None, None))
    last = ""  # lower than any path's key ("/" itself is ".")
    try:
        for path in paths:
            name = path.lstrip("/") or "."
            k = name.replace("/", "\0")  # tree_key, inline: this loop runs once per path of the tree
            if k <= last:
                raise SourceError(f"the walk gave {path!r} out of tree order (after {last.replace(chr(0), '/')!r})",
                                  "this is a bug in backup-tasks; report it with the target's paths")
            last = k
            while pk is not None and pk < k:
                gone(before)
                pk, before = next(parent, (None, None))
            same = None
            if pk == k:
                same = before
                pk, before = next(parent, (None, None))
            try:
                st = lstat(path)
            except FileNotFoundError:  # vanished since the walk: it is not part of this backup
                if same is not None:
                    gone(same)
                continue
            if st.st_nlink > 1:
                linked.add(os.fsencode(name), st)
            if (same is not None and trust_metadata and S_ISREG(st.st_mode) and same["type"] == "file"
                    and same.get("sha256") and same["ino"] == st.st_ino and same["size"] == st.st_size
                    and same["mtime_ns"] == st.st_mtime_ns and same.get("ctime_ns") == st.st_ctime_ns
                    and same.get("mode") == S_IMODE(st.st_mode) and same.get("uid") == st.st_uid
                    and same.get("gid") == st.st_gid):
                # The common case, kept short: the parent's line is this one, but for two fields.
                same["dev"], same["change"] = st.st_dev, "unchanged"
                unchanged += 1
                line = _draft_line(same)
                draft.write(line)
                offset += len(line)
                if full:
                    members.write(os.fsencode(name) + b"\0")
                continue
            entry = _metadata(name, path, st)
            if same is None and has_parent and not rehash and entry["type"] == "file":
                # new here: maybe a rename, known once the join has seen every gone path
                pending.write(encode({k_: entry[k_] for k_ in ("path", "ino", "size", "mtime_ns")}) + b"\n")
                marks.write(MARK.pack(offset, b"N"))
                line = encode(entry) + b"\n"
                draft.write(line)
                offset += len(line)
                continue
            archive = classify(entry, same, path, rehash)
            counts[entry["change"]] += 1
            if archive:
                entry["in"] = backup_id
            if archive or full:
                members.write(name.encode(fs_encoding, fs_errors) + b"\0")
            if archive and not full:  # waits for the sha256 the tar scan measures (in a full, every line does)
                marks.write(MARK.pack(offset, b"?"))
            line = _draft_line(entry)
            draft.write(line)
            offset += len(line)
        while pk is not None:
            gone(before)
            pk, before = next(parent, (None, None))
    finally:
        counts["unchanged"] += unchanged
        close = getattr(parent, "close", None)
        if close:
            close()
    return counts


def _names(path: Path) -> Iterator[bytes]:
    with open(path, "rb", buffering=BUFFER) as fh:
        pending = b""
        while chunk := fh.read(BUFFER):
            *whole, pending = (pending + chunk).split(b"\0")
            yield from whole


def _merge_members(member_list: Path, new_members: Path) -> None:
    """Put the new files (known once renames were resolved) into the member list at their place in tree order.

    tar then writes the archive in the listing's order, which is what lets verify and
    restore compare the two member by member, one entry of each at a time.
    """
    merged = member_list.with_name(member_list.name + ".merged")
    order = lambda name: tree_key(os.fsdecode(name))  # noqa: E731
    with open(merged, "wb", buffering=BUFFER) as out:
        for name in heapq.merge(_names(member_list), _names(new_members), key=order):
            out.write(name + b"\0")
    os.replace(merged, member_list)


def lines(path: Path) -> Iterator[bytes]:
    with open(path, "rb", buffering=BUFFER) as fh:
        yield from fh
