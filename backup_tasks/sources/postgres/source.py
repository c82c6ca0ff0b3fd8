"""PostgreSQL as a source kind: one database through ``pg_dump -Fc -Z0`` inside an exported snapshot.

The class is what the pipeline, verify, restore and drill call (``sources.base.Source``);
the work is in the modules beside it, one side each: dump.py (pg_dump in a snapshot, with
exact row counts), archive.py (the archive's table of contents), restore.py (pg_restore
through a staging database), cluster_globals.py (roles and tablespaces) and client.py
(connections, tools and what the server's messages mean).
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO, Callable

from backup_tasks.sources.base import register, restore_single_file
from backup_tasks.sources.db.dsn import Server
from backup_tasks.errors import InputError
from backup_tasks.sources.postgres import archive, base_check, base_layout, basebackup, cluster_globals, dump, restore
from backup_tasks.sources.postgres.client import MAINTENANCE_DB


class PostgresSource:
    kind = "postgres"
    required_fields = ("dsn",)
    suffix = "pgdump"
    #: logical: pg_dump of one database; physical: the whole cluster by pg_basebackup, the base of point-in-time recovery
    modes = ("logical", "physical")
    allows_plaintext = True
    maintenance_db = MAINTENANCE_DB
    #: a forced restore loads into a staging database and takes the name only after the hashes matched
    restores_via_staging_database = True

    def check_options(self, options: dict, *, where: str = "") -> None:
        dump.check_options(options, where=where)

    # backup ---------------------------------------------------------------------------------

    def suffix_for(self, target) -> str:
        return "tar" if target.mode == "physical" else self.suffix

    def dump(self, target, out: BinaryIO, workdir: Path) -> dict:
        if target.mode == "physical":
            return basebackup.dump(target, out, workdir, bin_dir=target.options.get("bin_dir"))
        return dump.dump(target, out, workdir)

    # verify ---------------------------------------------------------------------------------

    def check(self, plaintext: BinaryIO, manifest: dict, workdir: Path) -> dict:
        if _physical(manifest):
            return base_check.check(plaintext, manifest)
        return archive.check(plaintext, manifest, workdir)

    def list_objects(self, plaintext: BinaryIO, manifest: dict, workdir: Path | None = None) -> list[dict]:
        return archive.list_objects(plaintext, manifest, workdir)

    # restore to a file (--to PATH) ------------------------------------------------------------

    def restore(self, plaintext: BinaryIO | None, manifest: dict, dest: Path, *, force: bool, dry_run: bool) -> dict:
        """The archive itself as a file, for pg_restore by hand (``--to PATH``)."""
        if _physical(manifest):
            layout = base_layout.layout_of(manifest["source"])
            unpack = (f"tar -xf {dest} -C DATADIR (its WAL comes from the archive)" if layout == base_layout.SINGLE else
                      f"tar -xf {dest}, then tar -xf base.tar -C DATADIR and pg_wal.tar -C DATADIR/pg_wal")
            summary = {"restored_to": str(dest), "format": layout,
                       "next_step": f"{unpack}; or backupctl restore --target T --to-time TIME --to-datadir DIR"}
            return restore_single_file(plaintext, dest, summary, force=force, dry_run=dry_run)
        summary = {"restored_to": str(dest), "format": "pg_dump custom archive", "tables": manifest["source"]["tables"],
                   "next_step": f"pg_restore -d DATABASE {dest}"}
        return restore_single_file(plaintext, dest, summary, force=force, dry_run=dry_run)

    # restore into a database (--to-database NAME) ---------------------------------------------

    def database_state(self, server: Server, database: str) -> dict:
        return restore.database_state(server, database)

    def list_databases(self, server: Server, prefix: str) -> list[str]:
        return restore.list_databases(server, prefix)

    def create_database(self, server: Server, database: str, manifest: dict) -> None:
        restore.create_database(server, database, manifest)

    def drop_database(self, server: Server, database: str, *, force_disconnect: bool = True) -> None:
        restore.drop_database(server, database, force_disconnect=force_disconnect)

    def load(self, plaintext: BinaryIO, manifest: dict, server: Server, *, jobs: int = 1, tables: tuple[str, ...] = (),
             workdir: Path, deadline: float | None = None, before_load: Callable[[], None] | None = None,
             keep_owners: bool = False) -> dict:
        return restore.load(plaintext, manifest, server, jobs=jobs, tables=tables, workdir=workdir, deadline=deadline,
                            before_load=before_load, keep_owners=keep_owners)

    def apply_globals(self, server: Server, sql: bytes, globals_report: dict, *, dry_run: bool, force: bool = False) -> dict:
        return cluster_globals.apply_globals(server, sql, globals_report, dry_run=dry_run, force=force)

    def table_counts(self, server: Server) -> dict[str, int]:
        return restore.table_counts(server)

    def health_check(self, server: Server, sql: str, *, timeout_seconds: float = 300) -> object:
        return restore.health_check(server, sql, timeout_seconds=timeout_seconds)

    def refuse_occupied(self, server: Server, database: str, state: dict | None = None) -> None:
        restore.refuse_occupied(server, database, state)

    def restore_database(self, plaintext: BinaryIO | None, manifest: dict, database: str, server: Server, *, force: bool,
                         dry_run: bool, jobs: int = 1, tables: tuple[str, ...] = (), workdir: Path,
                         commit_check: Callable[[], None] | None = None, keep_owners: bool = False) -> dict:
        return restore.restore_database(plaintext, manifest, database, server, force=force, dry_run=dry_run, jobs=jobs,
                                        tables=tables, workdir=workdir, commit_check=commit_check, keep_owners=keep_owners)


def _physical(manifest: dict) -> bool:
    return (manifest.get("source") or {}).get("mode") == "physical"


def refuse_physical(manifest: dict) -> None:
    """A base backup is a whole cluster: it is restored into a data directory, not into a database."""
    if _physical(manifest):
        raise InputError(f"backup {manifest.get('backup_id')} is a physical base backup of a whole cluster",
                         "restore it with backupctl restore --target T --to-time TIME --to-datadir DIR, or --to PATH for the tar")


register(PostgresSource())
