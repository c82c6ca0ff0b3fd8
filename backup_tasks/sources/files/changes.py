"""Which files of a tree changed since the parent backup, and the tree listing that results.

A file's content is taken as unchanged when its (size, mtime_ns, inode) match the
parent's listing, the way restic and borg decide. ctime is compared too, but a change of
ctime alone (chmod, chown, a new hard link) only means new metadata: it is recorded
from ``lstat`` and the content is not read again. The device number is deliberately
not compared: it changes between snapshot mounts and NFS remounts while the files do
not, and comparing it would turn every such backup into a full. With ``rehash`` every
file is read and its sha256 compared instead, for filesystems whose metadata cannot be
trusted.

A path absent from the parent whose (inode, size, mtime) matches a parent file is a
rename: it is recorded as a reference to the bytes the parent chain already holds.

Two passes keep memory flat. The first stats every path and writes a draft line per
path to a file in the work directory, while the paths whose content must be archived
go to tar's member list. The second, after tar, rewrites the draft into the final
listing, adding the sha256 the tar scan measured for each archived file.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from backup_tasks.sources.files.tree_listing import ListingWriter, ParentIndex, encode

CHANGES = ("new", "modified", "metadata", "renamed", "unchanged")


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


def _metadata(path: str, st: os.stat_result) -> dict:
    entry = {"path": member_name(path), "mode": stat.S_IMODE(st.st_mode), "uid": st.st_uid, "gid": st.st_gid,
             "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns, "ino": st.st_ino, "dev": st.st_dev,
             # the same mtime as text: jq reads numbers as doubles, which lose the nanoseconds
             "mtime": f"{st.st_mtime_ns // 10**9}.{st.st_mtime_ns % 10**9:09d}"}
    if stat.S_ISDIR(st.st_mode):
        entry.update(type="dir", size=0)
    elif stat.S_ISLNK(st.st_mode):
        entry.update(type="symlink", size=0, link=os.readlink(path))
    else:
        entry.update(type="file", size=st.st_size)
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


def classify(entry: dict, parent: ParentIndex | None, path: str, rehash: bool) -> bool:
    """Fill ``entry['change']`` (and the content reference when carried); True if its content must be archived."""
    if parent is None:
        entry["change"] = "new"
        return entry["type"] == "file"
    before = parent.get(entry["path"])
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
        entry["change"] = "modified"
        return True
    if before is None and not rehash:
        renamed = parent.same_content(entry["ino"], entry["size"], entry["mtime_ns"])
        if renamed is not None and renamed["path"] != entry["path"]:
            _carry(entry, renamed, "renamed")
            return False
    entry["change"] = "new" if before is None else "modified"
    return True


def _meta_moved(before: dict, entry: dict) -> bool:
    return any(before.get(k) != entry[k] for k in ("mode", "uid", "gid"))


def first_pass(paths: Iterable[str], chain: Chain, workdir: Path, member_list: Path, *, full: bool) -> dict:
    """Stat every path; write the draft listing and tar's member list; return counts.

    A full archives every path (as it always has, so standard tools restore it alone);
    an incremental archives only the regular files whose content is new or changed.
    """
    parent = ParentIndex(chain.parent_listing, workdir) if chain.parent_listing else None
    counts = dict.fromkeys(CHANGES, 0)
    seen_in_parent = 0
    try:
        with open(workdir / "draft.jsonl", "w", encoding="utf-8") as draft, open(member_list, "wb") as members:
            for path in paths:
                try:
                    st = os.lstat(path)
                except FileNotFoundError:
                    continue  # vanished since the walk: it is not part of this backup
                entry = _metadata(path, st)
                archive = classify(entry, parent, path, chain.rehash)
                if parent is not None and entry["change"] not in ("new", "renamed"):
                    seen_in_parent += 1
                counts[entry["change"]] += 1
                if archive:
                    entry["in"] = chain.backup_id
                if archive or full:
                    members.write(os.fsencode(member_name(path)) + b"\0")
                # "?": waits for the sha256 the tar scan measures; "+": final as it is
                draft.write(("?" if archive else "+") + encode(entry) + "\n")
        if parent is not None:
            counts["deleted"] = parent.count - seen_in_parent
    finally:
        if parent is not None:
            parent.close()
    return counts


class ArchiveSpool:
    """The archive's members as tar's output is scanned: one JSON line each in the work directory, and counts.

    The second pass reads it back in step with the draft, so neither the dump nor the
    pass holds the archive's listing in memory. Hard links are the exception that needs
    a lookup (their bytes are under an earlier member's name), so the names they link to
    are kept: as many as there are hard-linked files, not files.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._out = open(path, "w", encoding="utf-8")
        self.entries = self.files = self.bytes = 0
        self.link_targets: set[str] = set()

    def add(self, entry: dict) -> None:
        self._out.write(encode(entry) + "\n")
        self.entries += 1
        if entry["type"] == "file":
            self.files += 1
            self.bytes += entry["size"]
        elif entry["type"] == "hardlink":
            self.link_targets.add(entry["link"])

    def close(self) -> None:
        self._out.close()

    def __iter__(self) -> Iterator[dict]:
        with open(self.path, encoding="utf-8") as spooled:
            for line in spooled:
                yield json.loads(line)


def second_pass(workdir: Path, archive: ArchiveSpool, chain: Chain, *, full: bool = False) -> int:
    """Write the final listing: archived files get the size and sha256 the tar scan measured.

    ``archive``: the members tar wrote, in the member list's order, which is the draft's:
    the two are read side by side. In a ``full`` every path is a member; in an
    incremental only the files whose content is archived ("?" lines). A path whose member
    is not where the draft expects it is one tar no longer found (deleted between the
    walk and tar's read): it is left out, it does not exist in this backup. So the
    listing names exactly the archive's members, which is what verify and restore
    compare the archive with. A hard link in a full points at the member that carries
    the bytes, so a restore can find them under that name.
    """
    members = iter(archive)
    current = next(members, None)
    targets: dict[str, dict] = {}  # hard links' targets seen so far: name -> scan entry

    def member(path: str) -> dict | None:
        nonlocal current
        if current is None or current["path"] != path:
            return None
        found, current = current, next(members, None)
        if path in archive.link_targets:
            targets[path] = found
        return found

    writer = ListingWriter(chain.listing_out)
    try:
        with open(workdir / "draft.jsonl", encoding="utf-8") as draft:
            for line in draft:
                if line[0] == "+" and not full:  # not in the archive, nothing to add: copied without decoding
                    writer.write_line(line[1:])
                    continue
                entry = json.loads(line[1:])
                scanned = member(entry["path"])
                if scanned is None:
                    continue
                if entry["type"] != "file":
                    if scanned.get("link") is not None:  # the link tar stored, should it have moved since the walk
                        entry["link"] = scanned["link"]
                    writer.write(entry)
                    continue
                if scanned["type"] == "hardlink":
                    target = targets.get(scanned["link"])
                    if target is None or "sha256" not in target:
                        continue
                    entry["member"] = scanned["link"]
                    scanned = target
                elif scanned["type"] != "file":
                    continue
                entry["size"], entry["sha256"] = scanned["size"], scanned["sha256"]
                writer.write(entry)
    finally:
        count = writer.close()
    return count
