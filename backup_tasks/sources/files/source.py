"""Files and config targets: a pax tar written by GNU tar, restored by a safe extractor.

The class is what the pipeline, verify and restore call (``sources.base.Source``); the
work is in the modules beside it: members.py chooses what goes in, gnu_tar.py writes
the archive, tarstream.py lists it with every file's sha256 as the bytes pass,
listing.py compares that listing with the backup's record, and extract.py restores safely.

A dump with a ``chain`` (every backup the pipeline runs) writes the tree listing, the
one per-file record, stored as its own object: the report keeps counts only, so the
signed manifest stays small whatever the number of files. Without a chain there is no
listing, and the report carries the archive's listing as manifests did before.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO, Iterator

from backup_tasks.errors import VerificationFailed
from backup_tasks.sources.base import register
from backup_tasks.sources.files.extract import (
    extract,
    plan_restore,
    refuse_unless_empty,
)
from backup_tasks.sources.files.changes import CHANGES, LINKED, Chain, first_pass
from backup_tasks.sources.files.final_listing import ArchiveSpool, BesideTar, second_pass
from backup_tasks.sources.files.gnu_tar import gnu_tar_version, run_tar
from backup_tasks.sources.files.listing import ListingMatch, ListingTally, archive_entries
from backup_tasks.sources.files.members import select_members, split_members, write_member_list
from backup_tasks.sources.files.split_join import OtherHalf, worth_splitting
from backup_tasks.sources.files.tarstream import TarScanner, TarStreamError


class FilesSource:
    """Directories and files as a pax tar; see the module docstring."""

    kind = "files"
    required_fields = ("paths",)
    suffix = "tar"
    allows_plaintext = True
    #: dumps take a ``chain`` (changes.Chain): incremental and differential backups, and a tree listing
    chains = True

    def dump(self, target, out: BinaryIO, workdir: Path, chain: Chain | None = None) -> dict:
        """Archive ``target.paths`` to ``out``; report the archive's listing with sha256.

        With ``chain``, also write the tree listing (tree_listing.py) to ``chain.listing_out``;
        with a parent listing in it, archive only the files whose content changed since.
        """
        tool = gnu_tar_version()
        paths, warnings = select_members(target)
        workdir = Path(workdir)
        list_file = workdir / "members.nul"
        if chain is None:
            write_member_list(paths, list_file)
            entries, tar_warnings = run_tar(list_file, out, workdir, target.name)
            files = [e for e in entries if e["type"] == "file"]
            counts = {"file_count": len(files), "entry_count": len(entries), "bytes": sum(e["size"] for e in files),
                      "files": entries}
        else:
            full = chain.parent_listing is None
            rest = None
            if not full and worth_splitting(chain) and (split := split_members(target, warnings)) is not None:
                try:
                    rest = OtherHalf(split[1], chain, workdir, warnings, full=full)
                    paths = split[0]
                except OSError:  # no interpreter to start (an embedding without one): one process does it all
                    rest = None
            changes = first_pass(paths, chain, workdir, list_file, full=full,
                                 walk_again=lambda: select_members(target, _cleared(warnings))[0], rest=rest)
            del paths  # a gathered list (include patterns): the draft on disk holds the tree from here on
            draft_lines = sum(changes[c] for c in CHANGES)
            spool = ArchiveSpool(workdir / "archive.jsonl", follow=not full)
            beside = None if full else BesideTar(workdir, spool, chain, draft_lines=draft_lines)
            try:
                # Hard links stay tar hard links, in an incremental too: tar links only to a member it
                # archived in this run, so a name whose first one is in a parent carries its own bytes.
                _, tar_warnings = run_tar(list_file, out, workdir, target.name, on_entry=spool.add,
                                          linked=workdir / LINKED)
            finally:
                spool.close()
                if beside is not None:
                    beside.join()  # ends with the spool, tar done or failed
            entries = beside.result() if beside else second_pass(workdir, spool, chain, full=full, draft_lines=draft_lines)
            counts = {"file_count": spool.files, "entry_count": spool.entries, "bytes": spool.bytes,
                      "listing_entries": entries, "changes": changes}
        return {
            "format": "pax",
            "tool": tool,
            "roots": [os.path.normpath(p) for p in target.paths],
            **counts,
            "warnings": warnings + tar_warnings,
        }

    def check(self, plaintext: BinaryIO, manifest: dict, workdir: Path, listing: Path | None = None,
              tally: ListingTally | None = None) -> dict:
        """Scan the whole archive; its members and every file's sha256 must match the record, in order.

        ``listing``: the backup's tree listing, fetched and checked against the signed
        manifest; not needed for a backup whose manifest carries the file list.
        ``tally``: filled with what the listing says beyond the archive's members (which
        backups hold the other files), read in the same pass.
        """
        match = ListingMatch(archive_entries(manifest, listing, tally))
        try:
            TarScanner(match).read_all(plaintext)
        except TarStreamError as exc:
            raise VerificationFailed(exc.message, exc.remedy, check="tar-structure") from None
        match.close()
        return {"files_checked": match.files, "entries_checked": match.count, "bytes_checked": match.bytes}

    def restore(self, plaintext: BinaryIO, manifest: dict, dest: Path, *, force: bool, dry_run: bool,
                strip_source_path: bool = False, listing: Path | None = None) -> dict:
        """Extract under ``dest`` (members keep their full original paths below it).

        With ``strip_source_path`` they land relative to the roots' common directory
        instead (see ``source_prefix``), and the summary names that directory.
        Refuses a non-empty ``dest`` without ``force`` (also in a dry run, which answers
        "what would this command do"). After extracting, the archive's listing and
        hashes must match the record, member by member as they pass, or the restore fails
        with VerificationFailed. ``listing``: as for ``check``.
        """
        dest = Path(os.path.abspath(dest))
        prefix = source_prefix(manifest, listing) if strip_source_path else ""
        stripped = {"strip_source_path": "/" + prefix} if strip_source_path else {}
        plan = plan_restore(archive_entries(manifest, listing), dest, strip_prefix=prefix, list_paths=dry_run)
        refuse_unless_empty(dest, force)
        if dry_run:
            return {"restored_to": str(dest), "dry_run": True, **plan, **stripped}
        if not dest.exists():
            dest.mkdir(mode=0o700, parents=True)
            dest.chmod(0o700)  # mkdir's mode is filtered by the umask; be exact
        real = os.path.realpath(dest)
        match = ListingMatch(archive_entries(manifest, listing))
        counts, _ = extract(plaintext, real, strip_prefix=prefix, on_entry=match)
        match.close()
        return {"restored_to": str(dest), **counts, **stripped}


def _cleared(warnings: list[str]) -> list[str]:
    """The walk's warnings list, emptied for a walk that starts over (its own warnings replace the first's)."""
    warnings.clear()
    return warnings


def source_prefix(manifest: dict, listing: Path | None = None) -> str:
    """The archive path that ``strip_source_path`` removes: the deepest directory holding every root.

    ``paths = ["/srv/app/uploads"]`` gives ``srv/app/uploads`` (its contents land in the
    destination); ``["/srv/app/.env", "/srv/app/config"]`` gives ``srv/app`` (``.env``
    and ``config/`` land there); a single file root gives its directory.
    """
    roots = manifest["source"].get("roots") or ["/"]
    prefix = os.path.commonpath(roots).lstrip("/")
    if prefix and _type_of(archive_entries(manifest, listing), prefix) not in ("dir", None):
        prefix = os.path.dirname(prefix)
    return prefix


def _type_of(entries: Iterator[dict], path: str) -> str | None:
    return next((e["type"] for e in entries if e["path"] == path), None)


class ConfigSource(FilesSource):
    """.env files and config directories: the files behaviour, never stored unencrypted."""

    kind = "config"
    allows_plaintext = False


register(FilesSource())
register(ConfigSource())
