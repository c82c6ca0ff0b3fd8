"""Whether an archive's members (paths, types, link targets, sizes, sha256) are the ones the backup recorded.

``check`` compares a scan of the stored archive with the record; a restore compares the
scan of what it extracts. Either way a difference means the backup is not what was
dumped, and it is reported with the paths that differ.

The record comes in two forms, and ``archive_entries`` reads both. Backups taken before
the tree listing became the only per-file record carry the archive's listing inside
the signed manifest (``source.files``). Newer ones carry only the tree listing object
(tree_listing.py), from which the archive's members follow: in a full every path is a
member; in an incremental or differential the files whose ``in`` names this backup.

Both forms list members in archive order, so the comparison walks the two side by side
and holds one entry of each, however many files the tree has.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from backup_tasks.errors import VerificationFailed
from backup_tasks.sources.files.tree_listing import decode, listing_lines

SHOWN = 5  # how many paths an error message names before "and N more"

_REMEDY = "do not trust this backup; restore from another copy and run a new backup"


def _some(paths: list[str], more: int = 0) -> str:
    shown = ", ".join(repr(p) for p in paths[:SHOWN])
    more += max(0, len(paths) - SHOWN)
    return shown + (f" and {more} more" if more else "")


def has_listing_inside(manifest: dict) -> bool:
    """True for a backup whose manifest still carries the archive's listing (``source.files``)."""
    return "files" in (manifest.get("source") or {})


@dataclass
class ListingTally:
    """What a read of the whole tree listing saw besides the archive's members, so no second read is needed.

    ``holders``: every other backup the listing names as holding a file's bytes, with the
    first path it names it for; verify proves each is a parent in the chain.
    ``complete`` once the listing was read to its end.
    """

    entries: int = 0
    files_here: int = 0
    holders: dict[str, str] = field(default_factory=dict)
    complete: bool = False


def archive_entries(manifest: dict, listing: Path | None = None, tally: ListingTally | None = None) -> Iterator[dict]:
    """The archive's members in archive order, from the manifest's old field or from the tree listing at ``listing``.

    ``tally``: filled as the listing is read (left incomplete for the manifest's old field).
    """
    if has_listing_inside(manifest):
        yield from manifest["source"]["files"]
        return
    if listing is None:
        raise VerificationFailed("the backup's tree listing was not given and its manifest has no file list",
                                 "the manifest is not from a files or config backup, or the listing was not fetched",
                                 check="tar-listing")
    own, whole = manifest.get("backup_id"), not manifest.get("parent")
    tally = tally if tally is not None else ListingTally()
    holders = tally.holders
    known: set[bytes] = set()  # parents' ids, as they appear in a line, once a file entry named them
    for line in listing_lines(listing):
        tally.entries += 1
        if not whole:
            # Most of an incremental's lines are files held by a parent already named: a line
            # that says so, in the compact form the listing is written in, needs no decoding.
            # Inside a JSON string a quote is always escaped, so '"in":"' can only be the key.
            at = line.find(_HOLDER)
            if at >= 0 and line[at + 6:line.find(b'"', at + 6)] in known:
                continue
        entry = decode(line)
        if entry["type"] == "file":
            holder = entry.get("in")
            if holder != own:
                if holder not in holders:
                    holders[holder] = entry["path"]
                    at = line.find(_HOLDER)
                    if at >= 0 and isinstance(holder, str) and holder.isascii() and \
                            line.startswith(holder.encode() + b'"', at + 6):  # written as it is, not escaped
                        known.add(holder.encode())
                continue  # its bytes live in a parent's archive
            tally.files_here += 1
            member = entry.get("member")
            if member and member != entry["path"]:  # a hard link: the member names the one holding the bytes
                yield {"path": entry["path"], "type": "hardlink", "size": 0, "link": member}
            elif "link" not in entry:
                # The line's own entry: its path, type, size and sha256 are the member's, and a copy
                # of those four fields for each of the tree's files costs more than the comparison.
                yield entry
            else:
                yield {"path": entry["path"], "type": "file", "size": entry["size"], "sha256": entry.get("sha256")}
        elif whole:  # an incremental archives file contents only
            out = {"path": entry["path"], "type": entry["type"], "size": 0}
            if "link" in entry:
                out["link"] = entry["link"]
            yield out
    tally.complete = True


_HOLDER = b'"in":"'


class ListingMatch:
    """Compare the archive's members, fed one at a time in archive order, with the expected ones."""

    def __init__(self, expected: Iterable[dict]) -> None:
        self._expected = iter(expected)
        self.count = 0  # members compared, all kinds
        self.files = self.bytes = 0  # regular files among them, and their content bytes

    def __call__(self, entry: dict) -> None:
        want = next(self._expected, None)
        self.count += 1
        if want is None:
            raise VerificationFailed(f"archive listing differs from the manifest: unexpected {_some([entry['path']])}",
                                     _REMEDY, check="tar-listing")
        if entry["type"] == "file":  # counted here, in the call every member makes anyway
            self.files += 1
            self.bytes += entry["size"]
            # The commonest member, a file as recorded, in one test; anything else goes through each
            # check below, which also words the error. A scanned file never has a link.
            if (want["path"] == entry["path"] and want["type"] == "file" and "link" not in want
                    and want["size"] == entry["size"] and want.get("sha256") == entry.get("sha256")):
                return
        if want["path"] != entry["path"]:
            raise VerificationFailed(
                f"archive listing differs from the manifest at member {self.count}: the archive holds "
                f"{entry['path']!r} where the backup's record has {want['path']!r} (missing, unexpected or repeated)",
                _REMEDY, check="tar-listing")
        if entry["type"] != want["type"] or entry.get("link") != want.get("link"):
            raise VerificationFailed(
                f"{entry['path']!r} is a {entry['type']} -> {entry.get('link')!r} in the archive but a "
                f"{want['type']} -> {want.get('link')!r} in the manifest", _REMEDY, check="tar-listing")
        if entry["size"] != want["size"] or entry.get("sha256") != want.get("sha256"):
            raise VerificationFailed(f"content of {entry['path']!r} differs from the manifest (size or sha256)",
                                     _REMEDY, check="file-sha256")

    def close(self) -> None:
        """The archive ended: every expected member must have been seen."""
        missing: list[str] = []
        more = 0
        for want in self._expected:
            if len(missing) < SHOWN:
                missing.append(want["path"])
            else:
                more += 1
        if missing:
            raise VerificationFailed(f"archive listing differs from the manifest: missing {_some(missing, more)}",
                                     _REMEDY, check="tar-listing")

