"""Files and config targets: a pax tar written by GNU tar, restored by a safe extractor.

The class is what the pipeline, verify and restore call (``sources.base.Source``); the
work is in the modules beside it: members.py chooses what goes in, gnu_tar.py writes
the archive, tarstream.py lists it with every file's sha256 as the bytes pass,
listing.py compares that listing with the manifest, and extract.py restores safely.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

from backup_tasks.errors import VerificationFailed
from backup_tasks.sources.base import register
from backup_tasks.sources.files.extract import (
    extract,
    plan_restore,
    refuse_unless_empty,
)
from backup_tasks.sources.files.changes import Chain, first_pass, second_pass
from backup_tasks.sources.files.gnu_tar import gnu_tar_version, run_tar
from backup_tasks.sources.files.listing import compare_listing, manifest_files
from backup_tasks.sources.files.members import select_members, write_member_list
from backup_tasks.sources.files.tarstream import TarStreamError, scan_stream


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
        extra: dict = {}
        if chain is None:
            write_member_list(paths, list_file)
            entries, tar_warnings = run_tar(list_file, out, workdir, target.name)
        else:
            full = chain.parent_listing is None
            changes = first_pass(paths, chain, workdir, list_file, full=full)
            del paths  # the draft on disk holds the tree from here on
            # Hard links stay tar hard links, in an incremental too: tar links only to a member it
            # archived in this run, so a name whose first one is in a parent carries its own bytes.
            entries, tar_warnings = run_tar(list_file, out, workdir, target.name)
            archived = {e["path"]: e for e in entries if e["type"] in ("file", "hardlink")}
            extra = {"listing_entries": second_pass(workdir, archived, chain), "changes": changes}
        files = [e for e in entries if e["type"] == "file"]
        return {
            **extra,
            "format": "pax",
            "tool": tool,
            "roots": [os.path.normpath(p) for p in target.paths],
            "file_count": len(files),
            "entry_count": len(entries),
            "bytes": sum(e["size"] for e in files),
            "files": entries,
            "warnings": warnings + tar_warnings,
        }

    def check(self, plaintext: BinaryIO, manifest: dict, workdir: Path) -> dict:
        """Scan the whole archive; its listing and every file's sha256 must match the manifest."""
        expected = manifest_files(manifest)
        try:
            actual = scan_stream(plaintext)
        except TarStreamError as exc:
            raise VerificationFailed(exc.message, exc.remedy, check="tar-structure") from None
        compare_listing(expected, actual)
        files = [e for e in actual if e["type"] == "file"]
        return {"files_checked": len(files), "entries_checked": len(actual),
                "bytes_checked": sum(e["size"] for e in files)}

    def restore(self, plaintext: BinaryIO, manifest: dict, dest: Path, *, force: bool, dry_run: bool,
                strip_source_path: bool = False) -> dict:
        """Extract under ``dest`` (members keep their full original paths below it).

        With ``strip_source_path`` they land relative to the roots' common directory
        instead (see ``source_prefix``), and the summary names that directory.
        Refuses a non-empty ``dest`` without ``force`` (also in a dry run, which answers
        "what would this command do"). After extracting, the archive's listing and
        hashes must match the manifest, or the restore fails with VerificationFailed.
        """
        dest = Path(os.path.abspath(dest))
        expected = manifest_files(manifest)
        prefix = source_prefix(manifest) if strip_source_path else ""
        stripped = {"strip_source_path": "/" + prefix} if strip_source_path else {}
        plan = plan_restore(expected, dest, strip_prefix=prefix)
        refuse_unless_empty(dest, force)
        if dry_run:
            return {"restored_to": str(dest), "dry_run": True, **plan, **stripped}
        if not dest.exists():
            dest.mkdir(mode=0o700, parents=True)
            dest.chmod(0o700)  # mkdir's mode is filtered by the umask; be exact
        real = os.path.realpath(dest)
        counts, listing = extract(plaintext, real, strip_prefix=prefix)
        compare_listing(expected, listing)
        return {"restored_to": str(dest), **counts, **stripped}


def source_prefix(manifest: dict) -> str:
    """The archive path that ``strip_source_path`` removes: the deepest directory holding every root.

    ``paths = ["/srv/app/uploads"]`` gives ``srv/app/uploads`` (its contents land in the
    destination); ``["/srv/app/.env", "/srv/app/config"]`` gives ``srv/app`` (``.env``
    and ``config/`` land there); a single file root gives its directory.
    """
    roots = manifest["source"].get("roots") or ["/"]
    prefix = os.path.commonpath(roots).lstrip("/")
    types = {e["path"]: e["type"] for e in manifest_files(manifest)}
    if prefix and types.get(prefix, "dir") != "dir":
        prefix = os.path.dirname(prefix)
    return prefix


class ConfigSource(FilesSource):
    """.env files and config directories: the files behaviour, never stored unencrypted."""

    kind = "config"
    allows_plaintext = False


register(FilesSource())
register(ConfigSource())
