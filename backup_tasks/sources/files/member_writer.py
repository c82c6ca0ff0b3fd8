"""Writing a files archive's members under a destination, safely, as the stream parser hears them.

``MemberWriter`` is the ``tarstream.MemberSink`` of a restore: the one parse of the
stream that lists the members and hashes their content (``TarScanner``) also hands each
member here, so the archive is not parsed a second time by ``tarfile`` (whose header
decoding and stream buffer were over half of a restore's time on small files).

What is refused, and why symlinks are kept, is ``admit``'s docstring. Files are written
as tarfile writes them (through no link: whatever stood at the name and was not a
directory was removed first), then given their mode and their mtime to the nanosecond;
directories get theirs last (``extract._set_dir_attrs``). Owners are not applied.
"""

from __future__ import annotations

import os
import stat
import tarfile
from decimal import Decimal

from backup_tasks.errors import VerificationFailed

def refuse(member_name: str, dest: str, reason: str) -> VerificationFailed:
    # A VerificationFailed (PermanentError, exit 1, alert), not an InputError: the
    # operator typed nothing wrong. Our dump never writes such a member, so the stored
    # backup is not what was dumped, and that must page someone, not look like a typo.
    return VerificationFailed(
        f"refusing to restore member {member_name!r} into {dest}: {reason}",
        "treat this backup as tampered and restore from another copy; the destination may hold a"
        " partial restore, delete it",
        check="tar-safety",
    )


def unsafe_name(name: str) -> str:
    if name.startswith("/"):
        return "absolute path"
    if ".." in name.split("/"):
        return "path contains '..'"
    return ""


def inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


class Parents:
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
        self._made: str | None = None  # the directory last known to exist

    def resolve(self, directory: str) -> str:
        if directory != self._dir:
            self._real = os.path.realpath(os.path.join(self.dest, directory))
            self._dir = directory
        return self._real

    def make(self, directory: str) -> None:
        """Create ``directory`` (below dest) and its parents if missing, as tarfile does for a member's."""
        if directory and directory != self._made:
            path = os.path.join(self.dest, directory)
            if not os.path.exists(path):
                os.makedirs(path)
            self._made = directory

    def forget(self) -> None:
        self._dir = self._made = None


def clear_way(path: str) -> bool:
    """Remove a file or symlink where a member is about to go (tar's own behaviour); whether one was there."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if stat.S_ISDIR(st.st_mode):
        return False
    os.unlink(path)
    return True


def admit(name: str, entry: dict, dest: str, parents: Parents) -> None:
    """Refuse (VerificationFailed) a member that may not be written at ``name`` below ``dest`` (a realpath).

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
    hard links, the one case where it checks something more (where the link leads):
    data_filter resolved two paths a member and was a quarter of a restore's time.
    """
    if reason := unsafe_name(name):
        raise refuse(name, dest, reason)
    if entry["type"] not in ("file", "dir", "symlink", "hardlink"):
        raise refuse(name, dest, "devices, fifos and other special members are never restored")
    parent = parents.resolve(os.path.dirname(name))
    if not inside(parent, dest):
        raise refuse(name, dest, f"its directory resolves to {parent}, outside the destination")
    if clear_way(os.path.join(parent, os.path.basename(name))):
        parents.forget()
    if entry["type"] == "hardlink":
        probe = tarfile.TarInfo(name)
        probe.type, probe.linkname, probe.mode = tarfile.LNKTYPE, entry["link"], entry["mode"]
        try:
            tarfile.data_filter(probe, dest)
        except tarfile.FilterError as exc:
            raise refuse(name, dest, str(exc)) from None


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


def mtime_ns(entry: dict, pax: dict[str, str]) -> int:
    """Exact to the nanosecond: a float loses the last digits of a pax mtime."""
    text = pax.get("mtime")
    return int(Decimal(text) * 1_000_000_000) if text else int(entry["mtime"]) * 1_000_000_000


class MemberWriter:
    """The restore's ``MemberSink``: each member written below ``dest`` (a realpath) as it passes.

    With ``strip_prefix`` (an archive path), members land relative to it and members
    outside it are skipped (their content passes unwritten). ``counts`` and ``dirs``
    (name, mode, mtime ns: their attributes are set last) are read once the stream ended;
    ``name`` is the member being read, for error messages.
    """

    def __init__(self, dest: str, strip_prefix: str = "") -> None:
        self.dest = dest
        self.strip_prefix = strip_prefix
        self.parents = Parents(dest)
        self.counts: dict = {"files": 0, "dirs": 0, "links": 0, "bytes": 0, "symlinks_leaving_dest": []}
        self.dirs: list[tuple[str, int, int]] = []
        self.name = "(archive start)"
        self._fd: int | None = None
        self._file: tuple[str, int, int] = ("", 0, 0)  # path, mode, mtime ns of the file being written

    def begin(self, entry: dict, pax: dict[str, str]) -> None:
        self.name = entry["path"]
        if reason := unsafe_name(self.name):  # refused before stripping could hide it
            raise refuse(self.name, self.dest, reason)
        name = strip_member(self.name, self.strip_prefix)
        if name is None:
            return
        kind, link = entry["type"], entry.get("link", "")
        if kind == "hardlink" and name != self.name:  # a hard link names another member: it moves with the tree
            link = strip_member(link, self.strip_prefix)
            if link is None:
                raise refuse(self.name, self.dest, "a hard link to a member outside the stripped path")
        admit(name, {**entry, "link": link} if kind == "hardlink" else entry, self.dest, self.parents)
        path = os.path.join(self.dest, name)
        self.parents.make(os.path.dirname(name))
        mode, ns = entry["mode"] & 0o777, mtime_ns(entry, pax)
        if kind == "file":
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            self._file = (path, mode, ns)
        elif kind == "dir":
            try:
                os.mkdir(path, 0o700)  # private until its own mode is set, last
            except FileExistsError:
                if not os.path.isdir(path):
                    raise
            self.counts["dirs"] += 1
            self.dirs.append((name, mode, ns))
        else:
            if kind == "symlink":
                os.symlink(link, path)
                if not inside(os.path.realpath(os.path.join(self.dest, os.path.dirname(name), link)), self.dest):
                    self.counts["symlinks_leaving_dest"].append(name)
            else:  # as tarfile links: to what the earlier member's path is now
                os.link(os.path.join(self.dest, link), path)
                os.chmod(path, mode)
                os.utime(path, ns=(ns, ns), follow_symlinks=False)
            self.parents.forget()
            self.counts["links"] += 1

    def data(self, chunk: memoryview) -> None:
        while self._fd is not None and chunk:
            chunk = chunk[os.write(self._fd, chunk):]

    def end(self, entry: dict) -> None:
        if self._fd is None:
            return
        self.close()
        path, mode, ns = self._file
        os.chmod(path, mode)
        os.utime(path, ns=(ns, ns), follow_symlinks=False)
        self.counts["files"] += 1
        self.counts["bytes"] += entry["size"]

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)
