"""Restoring a files backup: a safe extraction of the tar stream, checked against the manifest as it goes.

Restore extracts with Python's tarfile in stream mode through a filter built on
``tarfile.data_filter``; see ``_admit`` for what it refuses and why symlinks are kept
verbatim. The bytes are scanned again while extracting, so a restore whose content
does not match the manifest fails loudly instead of leaving a silently wrong tree.
"""

from __future__ import annotations

import os
import stat
import tarfile
from collections import deque
from decimal import Decimal
from pathlib import Path
from typing import BinaryIO, Callable, Iterable

from backup_tasks.errors import PermanentError, RestoreRefused, VerificationFailed
from backup_tasks.sources.files.tarstream import TarScanner, TarStreamError
from backup_tasks.sources.tee import TeeReader

#: tarfile's stream mode copies what is left of its buffer on every read, each 512-byte
#: header included: with a 1 MiB buffer most of a restore went to that copying (52k
#: members: 12.0 s against 3.7 s with 16 KiB, measured).
TAR_BUFFER = 16 * 1024


def _refuse(member_name: str, dest: str, reason: str) -> VerificationFailed:
    # A VerificationFailed (PermanentError, exit 1, alert), not an InputError: the
    # operator typed nothing wrong. Our dump never writes such a member, so the stored
    # backup is not what was dumped, and that must page someone, not look like a typo.
    return VerificationFailed(
        f"refusing to restore member {member_name!r} into {dest}: {reason}",
        "treat this backup as tampered and restore from another copy; the destination may hold a"
        " partial restore, delete it",
        check="tar-safety",
    )


def _unsafe_name(name: str) -> str:
    if name.startswith("/"):
        return "absolute path"
    if ".." in name.split("/"):
        return "path contains '..'"
    return ""


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _admit(member: tarfile.TarInfo, dest: str, parents: _Parents) -> tarfile.TarInfo:
    """The member as it may be extracted into ``dest`` (a realpath), or VerificationFailed.

    Refused: absolute names, '..', names that reach outside ``dest`` through a symlink
    already on disk, hard links to anything outside ``dest`` (``tarfile.data_filter``
    checks those), device files and fifos. Kept, unlike data_filter: permission bits
    (minus setuid/setgid/sticky; data_filter turns 0400 into 0600) and symlinks whatever
    they point to. A symlink is data: /etc trees are full of absolute ones, and refusing
    them would make config restores fail. What makes a symlink dangerous is writing
    *through* it, and that is refused: every member's parent must resolve inside
    ``dest``, and an existing non-directory at the member's own name is removed before
    writing, so nothing is ever opened through a link. Those two imply data_filter's own
    check that the member's path resolves inside ``dest``; it is therefore only run for
    hard links, the one case where it checks something more (where the link leads), and
    the rest of what it does (no owners, no special files) is done here: data_filter
    resolved two paths a member and was a quarter of a restore's time.
    """
    name = member.name
    if reason := _unsafe_name(name):
        raise _refuse(name, dest, reason)
    parent = parents.resolve(os.path.dirname(name))
    if not _inside(parent, dest):
        raise _refuse(name, dest, f"its directory resolves to {parent}, outside the destination")
    if _clear_way(os.path.join(parent, os.path.basename(name))):
        parents.forget()
    if member.islnk():
        try:
            checked = tarfile.data_filter(member, dest)
        except tarfile.FilterError as exc:
            raise _refuse(name, dest, str(exc)) from None
        return checked.replace(mode=member.mode & 0o777, deep=False)
    if not (member.isreg() or member.isdir() or member.issym()):
        raise _refuse(name, dest, f"{_TYPE_WORDS.get(member.type, 'special file')} members are never restored")
    # Owners are not restored (the restore host's users need not be the backed-up host's).
    return member.replace(mode=None if member.issym() else member.mode & 0o777,
                          uid=None, gid=None, uname=None, gname=None, deep=False)


_TYPE_WORDS = {tarfile.CHRTYPE: "character device", tarfile.BLKTYPE: "block device", tarfile.FIFOTYPE: "fifo"}


class _Parents:
    """The realpath of members' directories, the last one kept: an archive comes directory by directory.

    A directory resolves the same way again until a link appears or goes: the restore
    never removes a directory, so ``forget`` is called whenever it makes a symlink or a
    hard link (which may be one to a symlink) or clears a non-directory out of a member's
    way. Most members then cost no ``realpath`` (one ``lstat`` a path component).
    """

    def __init__(self, dest: str) -> None:
        self.dest = dest
        self._dir: str | None = None
        self._real = ""

    def resolve(self, directory: str) -> str:
        if directory != self._dir:
            self._real = os.path.realpath(os.path.join(self.dest, directory))
            self._dir = directory
        return self._real

    def forget(self) -> None:
        self._dir = None


def _clear_way(path: str) -> bool:
    """Remove a file or symlink where a member is about to go (tar's own behaviour); whether one was there."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if stat.S_ISDIR(st.st_mode):
        return False
    os.unlink(path)
    return True


def strip_member(name: str, prefix: str) -> str | None:
    """``name`` relative to ``prefix`` (an archive path without leading '/'); None when not below it.

    ``prefix`` itself and its ancestors are None too: they are the destination, which
    the restore made, and nothing of theirs (mode, mtime) is applied to it.
    """
    if not prefix:
        return name
    if name.startswith(prefix + "/"):
        return name[len(prefix) + 1:] or None
    return None


def _stripped(member: tarfile.TarInfo, prefix: str, dest: str) -> tarfile.TarInfo | None:
    name = strip_member(member.name, prefix)
    if name is None or name == member.name:
        return None if name is None else member
    if member.islnk():  # a hard link names another member: it moves with the tree
        link = strip_member(member.linkname, prefix)
        if link is None:
            raise _refuse(member.name, dest, "a hard link to a member outside the stripped path")
        return member.replace(name=name, linkname=link, deep=False)
    return member.replace(name=name, deep=False)


def extract(plaintext: BinaryIO, dest: str, *, strip_prefix: str = "",
            on_entry: Callable[[dict], None] | None = None) -> tuple[dict, list[dict]]:
    """Extract every member into ``dest``; return (counts, archive listing).

    With ``strip_prefix`` (an archive path), members land relative to it and members
    outside it are skipped; the listing keeps the archive's own names, so it is still
    compared with the manifest as stored. With ``on_entry`` each member's scanned entry
    goes there as it passes (and the listing returned is empty): a mismatch then stops
    the restore at that member.
    """
    counts = {"files": 0, "dirs": 0, "links": 0, "bytes": 0, "symlinks_leaving_dest": []}
    dirs: list[tarfile.TarInfo] = []
    # The scanner reads ahead of tarfile; a member's entry goes to ``on_entry`` only once
    # that member passed the safety checks, so a hostile archive is refused as unsafe
    # (what it is) rather than as one that differs from the record.
    scanned: deque[dict] = deque()
    scanner = TarScanner(scanned.append if on_entry else None)
    tee = TeeReader(plaintext, scanner.feed)
    name = "(archive start)"
    checked = released = 0
    parents = _Parents(dest)

    def release(upto: float) -> None:
        nonlocal released
        while on_entry and scanned and released < upto:
            on_entry(scanned.popleft())
            released += 1

    try:
        with tarfile.open(fileobj=tee, mode="r|", bufsize=TAR_BUFFER) as archive:
            for member in archive:
                name = member.name
                if reason := _unsafe_name(name):  # refused before stripping could hide it
                    raise _refuse(name, dest, reason)
                member = _stripped(member, strip_prefix, dest) if strip_prefix else member
                safe = _admit(member, dest, parents) if member is not None else None
                checked += 1
                release(checked)
                # tarfile keeps every member it has read in ``members``; a stream only moves
                # forward (a hard link is made with os.link from its path), so let them go
                archive.members.clear()
                if member is None:
                    continue
                # Attributes are set here, not by tarfile: it would also chown to no owner and
                # set the mtime that _set_mtime sets again to the nanosecond.
                archive.extract(safe, dest, set_attrs=False, filter="fully_trusted")
                if safe.issym() or safe.islnk():
                    parents.forget()
                if safe.isreg() or safe.islnk():
                    path = os.path.join(dest, safe.name)
                    os.chmod(path, safe.mode)
                    _set_mtime(path, safe)
                _count(safe, dest, counts, dirs)
        tee.drain()
        listing = scanner.close()
        release(float("inf"))
    except (tarfile.TarError, TarStreamError) as exc:
        raise VerificationFailed(f"cannot read the archive at member {name!r}: {exc}",
                                 "the backup is truncated or corrupt; restore from another copy; "
                                 "the destination may hold a partial restore", check="tar-structure") from None
    except OSError as exc:
        raise PermanentError(f"restore into {dest} failed at member {name!r}: {exc}",
                             "check free space and permissions at the destination") from None
    _set_dir_attrs(dirs, dest)
    return counts, listing


def _count(member: tarfile.TarInfo, dest: str, counts: dict, dirs: list) -> None:
    if member.isdir():
        counts["dirs"] += 1
        dirs.append(member)
    elif member.issym() or member.islnk():
        counts["links"] += 1
        if member.issym() and not _inside(
            os.path.realpath(os.path.join(dest, os.path.dirname(member.name), member.linkname)), dest
        ):
            counts["symlinks_leaving_dest"].append(member.name)
    else:
        counts["files"] += 1
        counts["bytes"] += member.size


def _set_mtime(path: str, member: tarfile.TarInfo) -> None:
    """Exact to the nanosecond: tarfile's float mtime loses the last digits of a pax mtime."""
    text = member.pax_headers.get("mtime")
    ns = int(Decimal(text) * 1_000_000_000) if text else int(member.mtime) * 1_000_000_000
    os.utime(path, ns=(ns, ns), follow_symlinks=False)


def _set_dir_attrs(dirs: list[tarfile.TarInfo], dest: str) -> None:
    # Last and deepest first, as tarfile.extractall does: a 0500 directory must stay
    # writable until its contents are in, and writing contents bumps its mtime.
    for member in sorted(dirs, key=lambda m: m.name, reverse=True):
        path = os.path.join(dest, member.name)
        if os.path.islink(path) or not os.path.isdir(path):
            continue
        _set_mtime(path, member)
        os.chmod(path, member.mode)


def plan_restore(entries: Iterable[dict], dest: Path, *, strip_prefix: str = "", list_paths: bool = True) -> dict:
    """What a restore of ``entries`` into ``dest`` writes; pure, refuses unsafe names early.

    ``list_paths=False`` leaves ``would_write`` empty: a real restore only wants the
    refusal, and a list of every path would grow with the tree.
    """
    plan = {"files": 0, "dirs": 0, "links": 0, "bytes": 0, "would_write": []}
    for entry in entries:
        if reason := _unsafe_name(entry["path"]) or (
            _unsafe_name(entry["link"]) if entry["type"] == "hardlink" else ""
        ):
            raise _refuse(entry["path"], str(dest), reason)
        if entry["type"] not in ("file", "dir", "symlink", "hardlink"):
            raise _refuse(entry["path"], str(dest), f"{entry['type']} members are never restored")
        name = strip_member(entry["path"], strip_prefix)
        if name is None:
            continue
        if list_paths:
            plan["would_write"].append(str(dest / name))
        key = {"file": "files", "dir": "dirs"}.get(entry["type"], "links")
        plan[key] += 1
        plan["bytes"] += entry["size"] if entry["type"] == "file" else 0
    return plan


def refuse_unless_empty(dest: Path, force: bool) -> None:
    if dest.exists() and not dest.is_dir():
        raise RestoreRefused(f"restore destination {dest} exists and is not a directory",
                             "choose a new or empty directory")
    if not force and dest.is_dir() and any(dest.iterdir()):
        raise RestoreRefused(f"restore destination {dest} is not empty; nothing was written",
                             "choose an empty or new directory, or pass --force to restore over it")
