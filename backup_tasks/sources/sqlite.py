"""SQLite through the online backup API: a consistent copy while writers keep writing.

``backup(pages=-1)`` copies every page inside one read transaction, so the copy is a
snapshot at one instant; writers wait on SQLite's busy handler at worst, never corrupt it.
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path
from typing import BinaryIO

from backup_tasks import defaults
from backup_tasks.errors import ConfigError, SourceError, VerificationFailed
from backup_tasks.sources.base import register, restore_single_file

BUSY_TIMEOUT_SECONDS = 60


class SQLiteSource:
    kind = "sqlite"
    required_fields = ("path",)
    suffix = "sqlite"
    allows_plaintext = True

    def check_local(self, target) -> None:
        """A path that is a directory can never be the database: say so at load (a missing file may appear later)."""
        if Path(target.path).is_dir():
            raise ConfigError(f"{target.path} is a directory, not a SQLite database file",
                              "point path at the database file itself, e.g. /srv/app/data/app.db", field="path")

    def dump(self, target, out: BinaryIO, workdir: Path) -> dict:
        path = Path(target.path)
        if path.is_dir():
            raise SourceError(f"dump of target '{target.name}' failed: {path} is a directory, not a SQLite database file",
                              "point 'path' in the target at the database file itself")
        if not path.is_file():
            raise SourceError(
                f"dump of target '{target.name}' failed: SQLite database {path} does not exist",
                "check 'path' in the target; a missing file is never backed up as an empty database",
            )
        snapshot = workdir / "snapshot.sqlite"
        try:
            src = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_SECONDS)
            try:
                dst = sqlite3.connect(snapshot)
                with dst:
                    src.backup(dst, pages=-1)
                dst.close()
            finally:
                src.close()
            report = _describe(snapshot)
        except sqlite3.DatabaseError as exc:
            raise SourceError(
                f"dump of target '{target.name}' failed: {path}: {exc}",
                "is the file a SQLite database and readable by the worker's user?",
            ) from exc
        if report["integrity_check"] != "ok":
            raise SourceError(
                f"dump of target '{target.name}': the source database {path} fails integrity_check: {report['integrity_check'][:200]}",
                "repair the source database (sqlite3 .recover) before backing it up",
            )
        with open(snapshot, "rb") as fh:
            shutil.copyfileobj(fh, out, defaults.CHUNK_SIZE)
        snapshot.unlink()
        report["database"] = str(path)
        return report

    def check(self, plaintext: BinaryIO, manifest: dict, workdir: Path) -> dict:
        copy = workdir / "verify.sqlite"
        try:
            with open(copy, "wb") as fh:
                shutil.copyfileobj(plaintext, fh, defaults.CHUNK_SIZE)
            try:
                found = _describe(copy)
            except sqlite3.DatabaseError as exc:
                raise VerificationFailed(f"backup {manifest['backup_id']}: not a readable SQLite database: {exc}", "use another backup", check="sqlite-integrity") from None
        finally:
            copy.unlink(missing_ok=True)
        if found["integrity_check"] != "ok":
            raise VerificationFailed(
                f"backup {manifest['backup_id']}: PRAGMA integrity_check failed: {found['integrity_check'][:200]}",
                "use another backup",
                check="sqlite-integrity",
            )
        expected = manifest["source"]["tables"]
        if found["tables"] != expected:
            diff = sorted(t for t in set(expected) | set(found["tables"]) if expected.get(t) != found["tables"].get(t))
            raise VerificationFailed(
                f"backup {manifest['backup_id']}: row counts differ from the manifest for tables {', '.join(diff[:5])}",
                "use another backup",
                check="sqlite-row-counts",
            )
        return {"tables_checked": len(found["tables"]), "rows_checked": sum(found["tables"].values())}

    def restore(self, plaintext: BinaryIO | None, manifest: dict, dest: Path, *, force: bool, dry_run: bool) -> dict:
        summary = {"restored_to": str(dest), "tables": manifest["source"]["tables"], "bytes": manifest["plaintext"]["size"]}
        return restore_single_file(plaintext, dest, summary, force=force, dry_run=dry_run)


def _describe(path: Path) -> dict:
    """What the manifest records and verify compares: integrity and exact row counts per table."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        integrity = "; ".join(row[0] for row in conn.execute("PRAGMA integrity_check"))
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%' ORDER BY name")]
        tables = {n: conn.execute(f'SELECT count(*) FROM "{n.replace(chr(34), chr(34) * 2)}"').fetchone()[0] for n in names}
        return {
            "integrity_check": integrity,
            "tables": tables,
            "page_size": conn.execute("PRAGMA page_size").fetchone()[0],
            "user_version": conn.execute("PRAGMA user_version").fetchone()[0],
            "sqlite_version": sqlite3.sqlite_version,
        }
    finally:
        conn.close()


register(SQLiteSource())
