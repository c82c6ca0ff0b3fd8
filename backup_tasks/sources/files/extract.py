"""Restoring a files backup: a safe extraction of the tar stream, checked against the manifest as it goes.

The stream is parsed once, by ``tarstream.TarScanner``, which lists and hashes every
member and hands it to ``member_writer.MemberWriter`` to be written; see
``member_writer.admit`` for what is refused and why symlinks are kept verbatim. As the
members pass, their listing is compared with the manifest's, so a restore whose content
does not match fails loudly instead of leaving a silently wrong tree.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO, Callable, Iterable

from backup_tasks.errors import PermanentError, RestoreRefused, VerificationFailed
from backup_tasks.sources.files.member_writer import MemberWriter, refuse, strip_member, unsafe_name
from backup_tasks.sources.files.tarstream import TarScanner, TarStreamError


def extract(plaintext: BinaryIO, dest: str, *, strip_prefix: str = "",
            on_entry: Callable[[dict], None] | None = None) -> tuple[dict, list[dict]]:
    """Extract every member into ``dest``; return (counts, archive listing).

    With ``strip_prefix`` (an archive path), members land relative to it and members
    outside it are skipped; the listing keeps the archive's own names, so it is still
    compared with the manifest as stored. With ``on_entry`` each member's scanned entry
    goes there as it passes (and the listing returned is empty): a mismatch then stops
    the restore at that member. A member's entry goes there only once the member passed
    the safety checks, so a hostile archive is refused as unsafe (what it is) rather than
    as one that differs from the record.
    """
    writer = MemberWriter(dest, strip_prefix)
    scanner = TarScanner(on_entry, sink=writer)
    try:
        try:
            listing = scanner.read_all(plaintext)
        finally:
            writer.close()
    except TarStreamError as exc:
        raise VerificationFailed(f"cannot read the archive at member {writer.name!r}: {exc.message}",
                                 "the backup is truncated or corrupt; restore from another copy; "
                                 "the destination may hold a partial restore", check="tar-structure") from None
    except OSError as exc:
        raise PermanentError(f"restore into {dest} failed at member {writer.name!r}: {exc}",
                             "check free space and permissions at the destination") from None
    _set_dir_attrs(writer.dirs, dest)
    return writer.counts, listing


def _set_dir_attrs(dirs: list[tuple[str, int, int]], dest: str) -> None:
    # Last and deepest first, as tarfile.extractall does: a 0500 directory must stay
    # writable until its contents are in, and writing contents bumps its mtime.
    for name, mode, ns in sorted(dirs, reverse=True):
        path = os.path.join(dest, name)
        if os.path.islink(path) or not os.path.isdir(path):
            continue
        os.utime(path, ns=(ns, ns), follow_symlinks=False)
        os.chmod(path, mode)


def plan_restore(entries: Iterable[dict], dest: Path, *, strip_prefix: str = "", list_paths: bool = True) -> dict:
    """What a restore of ``entries`` into ``dest`` writes; pure, refuses unsafe names early.

    ``list_paths=False`` leaves ``would_write`` empty: a real restore only wants the
    refusal, and a list of every path would grow with the tree.
    """
    plan = {"files": 0, "dirs": 0, "links": 0, "bytes": 0, "would_write": []}
    for entry in entries:
        if reason := unsafe_name(entry["path"]) or (
            unsafe_name(entry["link"]) if entry["type"] == "hardlink" else ""
        ):
            raise refuse(entry["path"], str(dest), reason)
        if entry["type"] not in ("file", "dir", "symlink", "hardlink"):
            raise refuse(entry["path"], str(dest), f"{entry['type']} members are never restored")
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
