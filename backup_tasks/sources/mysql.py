"""MySQL and MariaDB through ``mariadb-dump``/``mysqldump --single-transaction``: a consistent hot dump.

Exact row counts. mysqldump opens its own consistent snapshot, and MySQL cannot share
a snapshot between connections. So, like mysqldump's own ``--master-data``, we take a
global read lock for a moment: FLUSH TABLES WITH READ LOCK, open our snapshot, read the
binlog/GTID position, start the dump tool, and release the lock as soon as the tool's
output shows that its snapshot is open (the first table, routine or event section, or
its end). Both snapshots then see the same instant; writers wait only for that moment.
This needs the RELOAD privilege; without it the dump fails with a remedy rather than
recording counts that might not match. Counts are taken in our snapshot after the tool
finished.

The dump names no database (``mysqldump DB``, not ``--databases``), so it restores
into any database name. The password goes in a 0600 ``--defaults-extra-file``.

Restore pipes the plaintext stream into ``mariadb``/``mysql`` directly: MySQL cannot
rename a database, so there is no staging database. The stored and plaintext sha256 are
compared when the stream ends; if they do not match, a database the restore created is
dropped, and a forced restore over an existing database fails loudly.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import BinaryIO, Callable

from backup_tasks import defaults
from backup_tasks.sources.db import dsn
from backup_tasks.sources.db.dsn import Server
from backup_tasks.errors import ConfigError, InputError, PermanentError, RestoreRefused, ServiceUnavailable, SourceError, VerificationFailed
from backup_tasks.sources.db import pipes
from backup_tasks.sources.base import register, restore_single_file

log = logging.getLogger(__name__)

NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_$-]{0,63}$")
OPTION_KEYS = {"bin_dir"}
#: output of the dump tool that appears only after it opened its consistent snapshot
_SNAPSHOT_OPEN = (b"-- Table structure for table", b"-- Dumping events for database", b"-- Dumping routines for database",
                  b"-- Dump completed")
TRAILER = b"-- Dump completed"
_CREATE_TABLE = re.compile(rb"^CREATE TABLE `((?:[^`]|``)+)`", re.M)


def tool(*names: str, bin_dir: str | None = None) -> str:
    for name in names:
        path = (str(Path(bin_dir) / name) if bin_dir else shutil.which(name))
        if path and os.access(path, os.X_OK):
            return path
    raise PermanentError(f"none of {', '.join(names)} is installed on this worker", "install the MariaDB or MySQL client (Debian: mariadb-client)")


def dump_tool(bin_dir=None) -> str:
    return tool("mariadb-dump", "mysqldump", bin_dir=bin_dir)


def client_tool(bin_dir=None) -> str:
    return tool("mariadb", "mysql", bin_dir=bin_dir)


def connect(server: Server, *, what: str, ref: str | None = None, database: bool = True):
    import pymysql

    try:
        return pymysql.connect(**dsn.pymysql_kwargs(server, database=database))
    except pymysql.err.MySQLError as exc:
        err = classify(str(exc), server, what=what, ref=ref)
        if isinstance(err, ServiceUnavailable):
            log.warning("%s", err)  # one line per attempt: the task layer retries this with backoff
        raise err from None


def classify(message: str, server: Server, *, what: str, ref: str | None = None) -> Exception:
    text = pipes.last_lines(message, 3, secret=server.password)
    low = text.lower()
    where = server.address
    if "1045" in low or "access denied for user" in low:
        return SourceError(f"{what} failed: access denied for user '{server.user}' on {where} (wrong password or host not allowed)",
                           f"check the password behind {ref or 'the password reference'} and the user's host grants on {server.host}")
    if "1049" in low or "unknown database" in low:
        return SourceError(f"{what} failed: database '{server.database}' does not exist on {where}",
                           "check the database name in the DSN (SHOW DATABASES lists them)")
    if any(s in low for s in ("2003", "2002", "2013", "can't connect", "lost connection", "connection refused", "timed out",
                              "name or service not known")):
        return ServiceUnavailable(f"{what} failed: MySQL/MariaDB on {where} is unreachable: {text}",
                                  f"is the server on {where} up and reachable from this worker?")
    return SourceError(f"{what} failed on {where}: {text}", "see the message and the server's error log")


def quote_ident(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def check_database_name(name: str) -> None:
    if not NAME_RE.match(name or ""):
        raise InputError(f"'{name}' is not a database name this command accepts",
                         "use 1-64 letters, digits, '_', '$' or '-', starting with a letter, digit or '_'")


def _base_tables(cur, database: str) -> list[str]:
    cur.execute("SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s AND TABLE_TYPE = 'BASE TABLE' "
                "ORDER BY TABLE_NAME", (database,))
    return [r[0] for r in cur.fetchall()]


def _count(cur, tables: list[str]) -> dict[str, int]:
    out = {}
    for table in tables:
        cur.execute(f"SELECT COUNT(*) FROM {quote_ident(table)}")
        out[table] = int(cur.fetchone()[0])
    return out


class _SnapshotWatch:
    """Calls ``release`` once the dump tool's output shows its snapshot is open."""

    def __init__(self, release: Callable[[], None]) -> None:
        self.release = release
        self.released = False
        self._tail = b""

    def __call__(self, chunk: bytes) -> None:
        if self.released:
            return
        window = self._tail + chunk
        if any(m in window for m in _SNAPSHOT_OPEN):
            self.done()
        self._tail = window[-64:]

    def done(self) -> None:
        if not self.released:
            self.released = True
            self.release()


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
        import pymysql

        self.check_options(target.options, where=f"target '{target.name}'")
        bin_dir = target.options.get("bin_dir")
        server = dsn.for_target(target)
        what = f"dump of target '{target.name}'"
        tool_path = dump_tool(bin_dir)
        tool_text = subprocess.run([tool_path, "--version"], capture_output=True, text=True, env=dsn.child_env(server)).stdout.strip()
        conn = connect(server, what=what, ref=target.password)
        try:
            cur = conn.cursor()
            cur.execute("SELECT VERSION(), @@log_bin, @@character_set_database, @@collation_database")
            version, log_bin, charset, collation = cur.fetchone()
            try:
                cur.execute("FLUSH TABLES WITH READ LOCK")
            except pymysql.err.MySQLError as exc:
                raise SourceError(
                    f"{what} failed: FLUSH TABLES WITH READ LOCK was refused on {server.address}: {exc.args[-1]}",
                    f"GRANT RELOAD ON *.* TO '{server.user}'@...; the lock is held only until the dump's snapshot is open, "
                    "so that the manifest's row counts are exact",
                ) from None
            watch = _SnapshotWatch(lambda: cur.execute("UNLOCK TABLES"))
            try:
                cur.execute("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                cur.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT")
                position = _binlog_position(cur, log_bin, version)
                tables = _base_tables(cur, server.database)
                cur.execute("SELECT TABLE_NAME FROM information_schema.VIEWS WHERE TABLE_SCHEMA = %s ORDER BY 1", (server.database,))
                views = [r[0] for r in cur.fetchall()]
                with dsn.mysql_defaults_file(server) as cnf:
                    argv = [tool_path, f"--defaults-extra-file={cnf}", "--single-transaction", "--routines", "--triggers",
                            "--events", "--hex-blob", "--no-tablespaces", "--default-character-set=utf8mb4", "--quick",
                            server.database]
                    outcome = pipes.read_from(argv, out, env=dsn.child_env(server), what=f"{Path(tool_path).name} of target '{target.name}'",
                                              on_chunk=watch)
            finally:
                watch.done()
            if outcome.returncode != 0:
                raise classify(outcome.stderr, server, what=what, ref=target.password)
            counts = _count(cur, tables)
            conn.commit()
        finally:
            conn.close()
        return {
            "database": server.database,
            "server": server.address,
            "server_version": version,
            "character_set": charset,
            "collation": collation,
            "format": f"SQL ({Path(tool_path).name} --single-transaction --routines --triggers --events --hex-blob)",
            "tables": counts,
            "views": views,
            "binlog": position,
            "warnings": [ln for ln in outcome.stderr.splitlines() if ln.strip()][:20],
            "tool_versions": {Path(tool_path).name: tool_text, "mysql_server": version},
        }

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
            tables = len(_base_tables(cur, database)) if exists else 0
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
            return _count(cur, _base_tables(cur, server.database))
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
            try:
                cur.execute(sql)
                row = cur.fetchone() if cur.description else None
            except pymysql.err.MySQLError as exc:
                return _CheckError(str(exc.args[-1]))
            return row[0] if row else None
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
                except Exception:  # noqa: BLE001
                    log.exception("could not drop %s on %s after a failed restore", database, server.address)
            raise
        notes = [] if jobs <= 1 else ["--jobs is ignored for MySQL/MariaDB: the dump is one SQL stream"]
        return {**base, "replaced_existing": state["exists"], **loaded, "notes_restore": notes}


class _CheckError(str):
    """A health-check query that raised: its message, which counts as 'not true'."""


def _binlog_position(cur, log_bin, version: str) -> dict | None:
    """Where point-in-time recovery would continue from, or None without a binary log."""
    if not log_bin:
        return None
    position: dict = {}
    cur.execute("SHOW MASTER STATUS")
    row = cur.fetchone()
    if row:
        position.update(file=row[0], position=int(row[1]))
    for var in ("gtid_binlog_pos", "gtid_executed"):
        try:
            cur.execute(f"SELECT @@{var}")
            value = cur.fetchone()[0]
        except Exception:  # noqa: BLE001 - one of them exists, depending on MariaDB or MySQL
            continue
        if value:
            position["gtid"] = value
    return position or None


def scan(stream: BinaryIO) -> tuple[set[str], bytes, int]:
    """Tables the SQL stream creates, its last 4 KiB, and its size; one pass in 1 MiB chunks."""
    found: set[str] = set()
    carry = b""
    tail = b""
    size = 0
    while True:
        chunk = stream.read(defaults.CHUNK_SIZE)
        if not chunk:
            break
        size += len(chunk)
        block = carry + chunk
        cut = block.rfind(b"\n") + 1
        for m in _CREATE_TABLE.finditer(block, 0, cut):
            found.add(m.group(1).replace(b"``", b"`").decode("utf-8", "replace"))
        carry = block[cut:]
        tail = (tail + chunk)[-4096:]
    for m in _CREATE_TABLE.finditer(carry):
        found.add(m.group(1).replace(b"``", b"`").decode("utf-8", "replace"))
    return found, tail, size


_NAME = rb"(?:`((?:[^`]|``)+)`|([^\s`(]+))"  # a name as the server wrote it: quoted or not
_SUMMARY = {
    "tables": re.compile(rb"^CREATE TABLE " + _NAME, re.M),
    "insert_statements": re.compile(rb"^INSERT INTO " + _NAME, re.M),
    "views": re.compile(rb"^/\*!50001 VIEW " + _NAME, re.M),
    "triggers": re.compile(rb"^/\*!50003 CREATE\*/ /\*!50017 DEFINER=\S+\*/ /\*!50003 TRIGGER " + _NAME, re.M),
    "routines": re.compile(rb"^CREATE\s.*?(?:PROCEDURE|FUNCTION) " + _NAME, re.M),
    "events": re.compile(rb"^/\*!50106 CREATE\*/ /\*!50117 DEFINER=\S+\*/ /\*!50106 EVENT " + _NAME, re.M),
}


def summarize(stream: BinaryIO) -> dict:
    """A statement summary of the SQL stream (what ``--dry-run`` shows): objects by kind, INSERTs per table."""
    seen: dict[str, dict[str, int]] = {k: {} for k in _SUMMARY}
    carry = b""
    tail = b""
    while True:
        chunk = stream.read(defaults.CHUNK_SIZE)
        block = carry + chunk
        cut = block.rfind(b"\n") + 1 if chunk else len(block)
        for kind, rx in _SUMMARY.items():
            for m in rx.finditer(block, 0, cut):
                name = (m.group(1).replace(b"``", b"`") if m.group(1) is not None else m.group(2)).decode("utf-8", "replace")
                seen[kind][name] = seen[kind].get(name, 0) + 1
        carry = block[cut:]
        tail = (tail + chunk)[-4096:]
        if not chunk:
            break
    return {
        "objects": {k: sorted(v) for k, v in seen.items() if k != "insert_statements"},
        "insert_statements": seen["insert_statements"],
        "complete": TRAILER in tail,
    }


register(MySQLSource())
