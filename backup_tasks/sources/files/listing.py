"""Whether an archive's listing (paths, types, link targets, sizes, sha256) is the one the manifest recorded.

``check`` compares a scan of the stored archive with the manifest; a restore compares the
scan of what it extracted. Either way a difference means the backup is not what was
dumped, and it is reported with the first few paths that differ.
"""

from __future__ import annotations

from backup_tasks.errors import VerificationFailed

SHOWN = 5  # how many paths an error message names before "and N more"


def _some(paths: list[str]) -> str:
    shown = ", ".join(repr(p) for p in paths[:SHOWN])
    return shown + (f" and {len(paths) - SHOWN} more" if len(paths) > SHOWN else "")


def compare_listing(expected: list[dict], actual: list[dict]) -> None:
    """Raise VerificationFailed unless ``actual`` (from the archive) matches the manifest."""
    remedy = "do not trust this backup; restore from another copy and run a new backup"
    by_path = {e["path"]: e for e in actual}
    if len(by_path) != len(actual):
        seen: set[str] = set()
        dup = [e["path"] for e in actual if e["path"] in seen or seen.add(e["path"])]
        raise VerificationFailed(f"archive holds {_some(dup)} more than once", remedy, check="tar-listing")
    wanted = {e["path"]: e for e in expected}
    missing = [p for p in wanted if p not in by_path]
    extra = [p for p in by_path if p not in wanted]
    if missing or extra:
        parts = ([f"missing {_some(missing)}"] if missing else []) + ([f"unexpected {_some(extra)}"] if extra else [])
        raise VerificationFailed(f"archive listing differs from the manifest: {'; '.join(parts)}",
                                 remedy, check="tar-listing")
    for entry in actual:
        want = wanted[entry["path"]]
        if entry["type"] != want["type"] or entry.get("link") != want.get("link"):
            raise VerificationFailed(
                f"{entry['path']!r} is a {entry['type']} -> {entry.get('link')!r} in the archive but a "
                f"{want['type']} -> {want.get('link')!r} in the manifest", remedy, check="tar-listing")
        if entry["size"] != want["size"] or entry.get("sha256") != want.get("sha256"):
            raise VerificationFailed(f"content of {entry['path']!r} differs from the manifest (size or sha256)",
                                     remedy, check="file-sha256")


def manifest_files(manifest: dict) -> list[dict]:
    files = (manifest.get("source") or {}).get("files")
    if files is None:
        raise VerificationFailed("manifest has no file list (source.files)",
                                 "the manifest is not from a files or config backup", check="tar-listing")
    return files
