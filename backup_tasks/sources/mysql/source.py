"""MySQL and MariaDB as a source kind: a consistent hot dump of one database (dump.py) and its restore.

Restore pipes the plaintext stream into ``mariadb``/``mysql`` directly: MySQL cannot
rename a database, so there is no staging database. The stored and plaintext sha256 are
compared when the stream ends; if they do not match, a database the restore created is
dropped, and a forced restore over an existing database fails loudly.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from backup_tasks.errors import (
    ConfigError,
    InputError,
    RestoreRefused,
    SourceError,
    VerificationFailed,
)
from backup_tasks.sources.base import register, restore_single_file
from backup_tasks.sources.db import dsn, health, pipes
from backup_tasks.sources.db.dsn import Server
from backup_tasks.sources.mysql import dump
from backup_tasks.sources.mysql.client import (
    base_tables,
    check_database_name,
    client_tool,
    connect,
    count_rows,
    quote_ident,
)
from backup_tasks.sources.mysql.sqlscan import TRAILER, scan, summarize

log = logging.getLogger(__name__)

OPTION_KEYS = {"bin_dir"}


class MySQLSource:
    kind = "mysql"
    required_fields = ("dsn",)
    suffix = "sql"
    allows_plaintext = True
    maintenance_db = ""

    def check_options(self, options: dict, *, where: str = "") -> None:
        unknown = set(options) - OPTION_KEYS
        if unknown:
            raise ConfigError(f"unknown mysql option(s): {', '.join(sorted(unknown))}", f"allowed: {', '.join(sorted(OPTION_KEYS))}",
                              where=where, field="options")

    def dump(self, target, out: BinaryIO, workdir: Path) -> dict:
        self.check_options(target.options, where=f"target '{target.name}'")
        return dump.dump(target, out, workdir)

    def check(self, plaintext: BinaryIO, manifest: dict, workdir: Path) -> dict:
        """The stream is complete (the tool's "Dump completed" trailer) and creates every manifest table."""
        found, tail, size = scan(plaintext)
        if TRAILER not in tail:
            raise VerificationFailed(f"backup {manifest['backup_id']}: the dump has no '-- Dump completed' trailer: it is truncated",
                                     "use another backup", check="mysql-trailer")
        missing = [t for t in manifest["source"]["tables"] if t not in found]
        if missing:
            raise VerificationFailed(f"backup {manifest['backup_id']}: the dump does not create table(s) {', '.join(missing[:5])}",
                                     "use another backup", check="mysql-tables")
        return {"tables_checked": len(manifest["source"]["tables"]), "statements": "complete"}

    def restore(self, plaintext: BinaryIO | None, manifest: dict, dest: Path, *, force: bool, dry_run: bool) -> dict:
        """The SQL dump as a file (``--to PATH``), for ``mariadb DB < FILE`` by hand."""
        summary = {"restored_to": str(dest), "format": "SQL", "tables": manifest["source"]["tables"],
                   "next_step": f"mariadb DATABASE < {dest}"}
        return restore_single_file(plaintext, dest, summary, force=force, dry_run=dry_run)

    # databases ------------------------------------------------------------------------------

    def database_state(self, server: Server, database: str) -> dict:
        conn = connect(server, what=f"restore to {server.address}", database=False)
        try:
            cur = conn.cursor()
            cur.execute("SELECT 1 FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s", (database,))
            exists = cur.fetchone() is not None
            tables = len(base_tables(cur, database)) if exists else 0
        finally:
            conn.close()
        return {"exists": exists, "tables": tables}

    def list_databases(self, server: Server, prefix: str) -> list[str]:
        conn = connect(server, what=f"listing databases on {server.address}", database=False)
        try:
            cur = conn.cursor()
            cur.execute("SELECT SCHEMA_NAME FROM information_schema.SCHEMATA ORDER BY 1")
            return [r[0] for r in cur.fetchall() if r[0].startswith(prefix)]
        finally:
            conn.close()

    def create_database(self, server: Server, database: str, manifest: dict) -> None:
        src = manifest["source"]
        spec = f" CHARACTER SET {src['character_set']}" if re.match(r"^\w+$", src.get("character_set") or "") else ""
        if spec and re.match(r"^\w+$", src.get("collation") or ""):
            spec += f" COLLATE {src['collation']}"
        self._admin(server, f"CREATE DATABASE {quote_ident(database)}{spec}")

    def drop_database(self, server: Server, database: str, *, force_disconnect: bool = True) -> None:
        self._admin(server, f"DROP DATABASE IF EXISTS {quote_ident(database)}")

    def _admin(self, server: Server, statement: str) -> None:
        import pymysql

        conn = connect(server, what=f"restore on {server.address}", database=False)
        try:
            conn.cursor().execute(statement)
        except pymysql.err.MySQLError as exc:
            raise SourceError(f"on {server.address}: {statement}: {exc.args[-1]}", "check the restoring user's privileges") from None
        finally:
            conn.close()

    def load(self, plaintext: BinaryIO, manifest: dict, server: Server, *, jobs: int = 1, tables: tuple[str, ...] = (),
             workdir: Path, deadline: float | None = None, before_load: Callable[[], None] | None = None) -> dict:
        if tables:
            raise InputError("--table is available for PostgreSQL backups only", "restore the whole dump into a scratch database and copy the table")
        what = f"restore into {server.database} on {server.address}"
        with dsn.mysql_defaults_file(server) as cnf:
            argv = [client_tool(), f"--defaults-extra-file={cnf}", "--binary-mode", "--batch", server.database]
            outcome = pipes.feed_into(argv, plaintext, env=dsn.child_env(server), what=what, deadline=deadline)
        if outcome.returncode != 0 or not outcome.fed_all:
            raise SourceError(f"{what} failed: {pipes.last_lines(outcome.stderr, secret=server.password) or 'the client stopped reading'}",
                              "see the message")
        return {"jobs": 1, "streamed": True}

    def table_counts(self, server: Server) -> dict[str, int]:
        conn = connect(server, what=f"counting rows in {server.database} on {server.address}")
        try:
            cur = conn.cursor()
            return count_rows(cur, base_tables(cur, server.database))
        finally:
            conn.close()

    def health_check(self, server: Server, sql: str, *, timeout_seconds: float = 300) -> object:
        import pymysql

        conn = connect(server, what=f"health check on {server.database}")
        try:
            cur = conn.cursor()
            try:
                cur.execute(f"SET SESSION max_statement_time = {float(timeout_seconds)}")
            except pymysql.err.MySQLError:
                cur.execute(f"SET SESSION max_execution_time = {int(timeout_seconds * 1000)}")
            cur.execute("SET SESSION TRANSACTION READ ONLY")
            return health.first_value(cur, sql, pymysql.err.MySQLError, lambda exc: str(exc.args[-1]))
        finally:
            conn.close()

    def restore_database(self, plaintext: BinaryIO | None, manifest: dict, database: str, server: Server, *, force: bool,
                         dry_run: bool, jobs: int = 1, tables: tuple[str, ...] = (), workdir: Path,
                         commit_check: Callable[[], None] | None = None) -> dict:
        check_database_name(database)
        if tables:
            raise InputError("--table is available for PostgreSQL backups only", "restore the whole dump into a scratch database and copy the table")
        state = self.database_state(server, database)
        occupied = state["exists"] and state["tables"] > 0
        base = {"database": database, "server": server.address, "database_exists": state["exists"],
                "existing_tables": state["tables"], "tables": manifest["source"]["tables"]}
        if dry_run:
            return {**base, "needs_force": occupied and not force, **summarize(plaintext)}
        if occupied and not force:
            raise RestoreRefused(f"database '{database}' on {server.address} exists and has {state['tables']} table(s); refusing to overwrite it",
                                 "restore into a new database name, or pass --force to replace its tables")
        created = not state["exists"]
        if created:
            self.create_database(server, database, manifest)
        try:
            loaded = self.load(plaintext, manifest, server.on(database), workdir=workdir)
            if commit_check:
                commit_check()
        except BaseException:
            if created:
                try:
                    self.drop_database(server, database)
                except Exception:  # noqa: BLE001 - logged, and the restore's own error is re-raised below, not this one
                    log.exception("could not drop %s on %s after a failed restore", database, server.address)
            raise
        notes = [] if jobs <= 1 else ["--jobs is ignored for MySQL/MariaDB: the dump is one SQL stream"]
        return {**base, "replaced_existing": state["exists"], **loaded, "notes_restore": notes}


register(MySQLSource())
