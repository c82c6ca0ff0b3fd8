"""PostgreSQL through ``pg_dump -Fc -Z0`` inside an exported snapshot, so per-table row counts are exact.

Why a snapshot. A REPEATABLE READ transaction calls ``pg_export_snapshot()``; pg_dump
runs with ``--snapshot`` so that it sees exactly that instant, and the per-table row
counts for the manifest are taken in the same transaction while pg_dump streams. The
counts are therefore exact for the dump, not "about right" under concurrent writers,
and a restore drill can compare them with ``=``.

Why ``-Z0``. The chain's own stage compresses (zstd, multi-threaded, faster than
pg_dump's zlib), and an uncompressed custom archive is what ``pg_restore`` reads from a
pipe after ``age -d | zstd -d`` in a disaster without our code.

Restore into a database goes through a staging database (``<name>_restoring_<hex>``):
pg_restore reads the plaintext stream from a pipe (``--single-transaction``); only after
the stored and plaintext sha256 matched the signed manifest is the staging database
renamed to the requested name, replacing an existing one only with ``force``. A parallel
restore (``jobs > 1``) needs a seekable file: the plaintext is then written to a private
temporary file in the staging directory first, and its hashes are checked before
pg_restore starts. Objects are restored owned by the restoring user, without GRANTs
(``--no-owner --no-acl``), so a restore works on a server that lacks the source's roles;
with the backup's globals applied first, owners and GRANTs are kept.

Globals. With ``options.globals`` the dump also runs ``pg_dumpall --globals-only`` (roles,
their memberships and settings, tablespaces), which the pipeline seals, encrypted, into
the signed manifest (attachments.py): a whole cluster can be rebuilt from its targets'
backups. ``restore --to-database NAME --with-globals`` applies them first and then keeps
owners and GRANTs; ``restore --globals-to FILE`` writes the SQL for review. Applying
globals on a live cluster resets role passwords to the backup's, hence opt-in only.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
import subprocess
import threading
from pathlib import Path
from typing import BinaryIO, Callable

from backup_tasks import defaults
from backup_tasks.sources.db import dsn
from backup_tasks.sources.db.dsn import Server
from backup_tasks.errors import (
    ConfigError,
    InputError,
    PermanentError,
    RestoreRefused,
    ServiceUnavailable,
    SourceError,
    VerificationFailed,
)
from backup_tasks.sources.postgres import cluster_globals
from backup_tasks.sources.db import pipes
from backup_tasks.sources.base import register, restore_single_file

log = logging.getLogger(__name__)

OPTION_KEYS = {"schemas", "exclude_schemas", "tables", "exclude_tables", "globals", "bin_dir"}
#: ``globals`` value for a dump by a non-superuser: roles without their password hashes
GLOBALS_NO_ROLE_PASSWORDS = "no-role-passwords"
#: the attachment (attachments.py) holding ``pg_dumpall --globals-only``
GLOBALS_FILE = "globals.sql"
MAINTENANCE_DB = "postgres"
NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_$-]{0,62}$")
_SYSTEM_SCHEMAS = ("pg_catalog", "information_schema")

_TABLES_SQL = """
SELECT n.nspname, c.relname, c.relkind
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
ORDER BY 1, 2
"""


# -- versions -----------------------------------------------------------------------------------


def parse_version(text: str) -> tuple[int, int]:
    """The comparable major version from ``pg_dump --version`` output or a server version string.

    ``pg_dump (PostgreSQL) 15.20 (Debian 15.20-0+deb12u1)`` → (15, 0); ``16beta2`` → (16, 0);
    ``9.6.24`` → (9, 6): before release 10 the major version had two parts.
    """
    body = text.split("(PostgreSQL)", 1)[-1]
    match = re.search(r"(\d+)(?:\.(\d+))?", body)
    if not match:
        raise ValueError(f"no PostgreSQL version in {text!r}")
    major = int(match.group(1))
    return (major, int(match.group(2) or 0)) if major < 10 else (major, 0)


def server_major(server_version_num: int) -> tuple[int, int]:
    """The same comparable major from ``server_version_num`` (150020 → (15, 0), 90624 → (9, 6))."""
    if server_version_num >= 100000:
        return (server_version_num // 10000, 0)
    return (server_version_num // 10000, server_version_num // 100 % 100)


def _show(major: tuple[int, int]) -> str:
    return f"{major[0]}.{major[1]}" if major[0] < 10 else str(major[0])


def check_client_version(client_version_text: str, server_version_num: int, *, tool: str = "pg_dump",
                         target: str = "?", address: str = "?") -> None:
    """pg_dump must be at least as new as the server it dumps (pg_dump itself refuses otherwise, less clearly)."""
    client = parse_version(client_version_text)
    server = server_major(server_version_num)
    if client < server:
        raise SourceError(
            f"dump of target '{target}' failed: {tool} {_show(client)} is older than the PostgreSQL {_show(server)} server on {address}",
            f"install the PostgreSQL {_show(server)} client tools on the worker (or newer) and point options.bin_dir at them",
        )


def tool(name: str, bin_dir: str | None = None) -> str:
    if bin_dir:
        path = Path(bin_dir) / name
        if not os.access(path, os.X_OK):
            raise ConfigError(f"{path} is not an executable", "check options.bin_dir", field="options.bin_dir")
        return str(path)
    found = shutil.which(name)
    if not found:
        raise PermanentError(f"{name} is not installed on this worker", "install the PostgreSQL client tools (Debian: postgresql-client)")
    return found


def tool_version(path: str, env: dict | None = None) -> str:
    return subprocess.run([path, "--version"], capture_output=True, text=True, check=True, env=env).stdout.strip()


# -- connections and errors ---------------------------------------------------------------------


def connect(server: Server, *, what: str, ref: str | None = None):
    """A psycopg2 connection, or a typed error that names the server and never the password."""
    import psycopg2

    try:
        return psycopg2.connect(**dsn.psycopg2_kwargs(server))
    except psycopg2.OperationalError as exc:
        err = classify(str(exc), server, what=what, ref=ref)
        if isinstance(err, ServiceUnavailable):
            log.warning("%s", err)  # one line per attempt: the task layer retries this with backoff
        raise err from None


def classify(message: str, server: Server, *, what: str, ref: str | None = None) -> Exception:
    text = pipes.last_lines(message, 3, secret=server.password)
    low = text.lower()
    where = f"{server.host}:{server.port}"
    if "password authentication failed" in low or "no password supplied" in low or "authentication failed" in low:
        return SourceError(f"{what} failed: password authentication failed for user '{server.user}' on {where}",
                           f"check the password behind {ref or 'the password reference'} and pg_hba.conf on {server.host}")
    if "does not exist" in low and "database" in low:
        return SourceError(f"{what} failed: database '{server.database}' does not exist on {where}",
                           "check the database name in the DSN (psql -l lists them)")
    if "role" in low and "does not exist" in low:
        return SourceError(f"{what} failed: role '{server.user}' does not exist on {where}", "check the user in the DSN")
    if any(s in low for s in ("connection refused", "could not connect", "timeout expired", "could not translate host name",
                              "no route to host", "network is unreachable", "server closed the connection", "the database system is starting up",
                              "the database system is shutting down")):
        return ServiceUnavailable(f"{what} failed: PostgreSQL on {where} is unreachable: {text}",
                                  f"is PostgreSQL on {where} up and reachable from this worker?")
    return SourceError(f"{what} failed on {where}: {text}", "see the PostgreSQL server log")


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _qualified(schema: str, table: str) -> str:
    return f"{schema}.{table}"


def _split(name: str) -> tuple[str, str]:
    schema, dot, table = name.partition(".")
    return (schema, table) if dot else ("public", name)


# -- options ------------------------------------------------------------------------------------


def check_options(options: dict, *, where: str = "") -> dict:
    unknown = set(options) - OPTION_KEYS
    if unknown:
        raise ConfigError(f"unknown postgres option(s): {', '.join(sorted(unknown))}", f"allowed: {', '.join(sorted(OPTION_KEYS))}",
                          where=where, field="options")
    out = {}
    for key in ("schemas", "exclude_schemas", "tables", "exclude_tables"):
        value = options.get(key, [])
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) and v and not set(v) & set('*?"') for v in value):
            raise ConfigError("must be a list of exact names (no wildcards or quotes)", 'e.g. tables = ["public.orders"]',
                              where=where, field=f"options.{key}")
        out[key] = value
    value = options.get("globals", False)
    if value not in (True, False, GLOBALS_NO_ROLE_PASSWORDS):
        raise ConfigError(f"must be true, false or \"{GLOBALS_NO_ROLE_PASSWORDS}\", not {value!r}",
                          f'globals = true needs a superuser; globals = "{GLOBALS_NO_ROLE_PASSWORDS}" works for any role',
                          where=where, field="options.globals")
    out["globals"] = value
    out["bin_dir"] = options.get("bin_dir")
    return out


_CREATE_ROLE = re.compile(r'^CREATE ROLE ("(?:[^"]|"")+"|[^\s;]+);', re.M)
_CREATE_TABLESPACE = re.compile(r'^CREATE TABLESPACE ("(?:[^"]|"")+"|\S+)', re.M)


def _dump_globals(pg_dumpall: str, server: Server, env: dict, workdir: Path, mode, *, what: str, ref: str | None) -> dict:
    """``pg_dumpall --globals-only`` into ``workdir/attachments/globals.sql`` (0600); returns what it holds."""
    folder = Path(workdir) / "attachments"
    folder.mkdir(mode=0o700, exist_ok=True)
    path = folder / GLOBALS_FILE
    argv = [pg_dumpall, "--globals-only", "--no-password", "-l", server.database]
    if mode == GLOBALS_NO_ROLE_PASSWORDS:
        argv.append("--no-role-passwords")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        outcome = pipes.read_from(argv, fh, env=env, what=what)
    if outcome.returncode != 0:
        if "permission denied" in outcome.stderr and mode is True:
            raise SourceError(f"{what} failed: {pipes.last_lines(outcome.stderr, secret=server.password)}",
                              f'reading role passwords needs a superuser: connect as one, or set options.globals = "{GLOBALS_NO_ROLE_PASSWORDS}"')
        raise classify(outcome.stderr, server, what=what, ref=ref)
    text = path.read_text(encoding="utf-8", errors="replace")
    return {"roles": sorted(cluster_globals.unquote(n) for n in _CREATE_ROLE.findall(text)),
            "tablespaces": sorted(cluster_globals.unquote(n) for n in _CREATE_TABLESPACE.findall(text)),
            "role_passwords": mode is True, "attachment": GLOBALS_FILE}


def _selected(schema: str, table: str, opts: dict) -> bool:
    name = _qualified(schema, table)
    if opts["schemas"] and schema not in opts["schemas"]:
        return False
    if schema in opts["exclude_schemas"]:
        return False
    if opts["tables"] and name not in [_qualified(*_split(t)) for t in opts["tables"]]:
        return False
    return name not in [_qualified(*_split(t)) for t in opts["exclude_tables"]]


def _filter_args(opts: dict) -> list[str]:
    args: list[str] = []
    for key, flag in (("schemas", "-n"), ("exclude_schemas", "-N")):
        for schema in opts[key]:
            args += [flag, quote_ident(schema)]
    for key, flag in (("tables", "-t"), ("exclude_tables", "-T")):
        for name in opts[key]:
            schema, table = _split(name)
            args += [flag, f"{quote_ident(schema)}.{quote_ident(table)}"]
    return args


def list_tables(cur, opts: dict | None = None) -> list[tuple[str, str, str]]:
    cur.execute(_TABLES_SQL)
    rows = cur.fetchall()
    return [r for r in rows if opts is None or _selected(r[0], r[1], opts)]


def count_rows(cur, tables) -> dict[str, int]:
    counts = {}
    for schema, table, _kind in tables:
        cur.execute(f"SELECT count(*) FROM {quote_ident(schema)}.{quote_ident(table)}")
        counts[_qualified(schema, table)] = cur.fetchone()[0]
    return counts


# -- the source ---------------------------------------------------------------------------------


class PostgresSource:
    kind = "postgres"
    required_fields = ("dsn",)
    suffix = "pgdump"
    allows_plaintext = True
    maintenance_db = MAINTENANCE_DB
    #: a forced restore loads into a staging database and takes the name only after the hashes matched
    restores_via_staging_database = True

    def check_options(self, options: dict, *, where: str = "") -> None:
        check_options(options, where=where)

    # backup ---------------------------------------------------------------------------------

    def dump(self, target, out: BinaryIO, workdir: Path) -> dict:
        opts = check_options(target.options, where=f"target '{target.name}'")
        server = dsn.for_target(target)
        what = f"dump of target '{target.name}'"
        pg_dump = tool("pg_dump", opts["bin_dir"])
        client_text = tool_version(pg_dump, dsn.child_env(server))
        conn = connect(server, what=what, ref=target.password)
        try:
            conn.set_session(isolation_level="REPEATABLE READ", readonly=True)
            cur = conn.cursor()
            cur.execute("SELECT current_setting('server_version_num')::int, current_setting('server_version'), "
                        "pg_encoding_to_char(encoding), pg_export_snapshot() FROM pg_database WHERE datname = current_database()")
            version_num, version, encoding, snapshot = cur.fetchone()
            check_client_version(client_text, version_num, target=target.name, address=server.address)
            tables = list_tables(cur, opts)
            argv = [pg_dump, "-Fc", "-Z0", "--no-password", f"--snapshot={snapshot}", "-d", server.database, *_filter_args(opts)]
            counted: dict = {}

            def count() -> None:
                # Same transaction, same snapshot as pg_dump: the counts are exact for the dump.
                try:
                    counted["tables"] = count_rows(cur, tables)
                except Exception as exc:  # noqa: BLE001 - reported after pg_dump finished
                    counted["error"] = exc

            counter = threading.Thread(target=count, name=f"count-{target.name}")
            with dsn.pg_env(server) as env:
                counter.start()
                try:
                    outcome = pipes.read_from(argv, out, env=env, what=f"pg_dump of target '{target.name}'")
                finally:
                    counter.join()
                if outcome.returncode == 0 and opts["globals"]:
                    cluster = _dump_globals(tool("pg_dumpall", opts["bin_dir"]), server, env, workdir, opts["globals"],
                                            what=f"pg_dumpall --globals-only of target '{target.name}'", ref=target.password)
            if outcome.returncode != 0:
                raise classify(outcome.stderr, server, what=what, ref=target.password)
            if "error" in counted:
                raise SourceError(f"{what}: counting rows in the snapshot failed: {counted['error']}", "see the PostgreSQL server log")
            conn.rollback()
        finally:
            conn.close()
        return {
            "database": server.database,
            "server": server.address,
            "server_version": version,
            "encoding": encoding,
            "snapshot": snapshot,
            "format": "pg_dump custom archive, uncompressed (-Fc -Z0)",
            "tables": counted["tables"],
            "partitioned_tables": [_qualified(s, t) for s, t, k in tables if k == "p"],
            "options": {k: v for k, v in opts.items() if v},
            **({"globals": cluster} if opts["globals"] else {}),
            "warnings": [ln for ln in outcome.stderr.splitlines() if ln.strip()][:20],
            "tool_versions": {"pg_dump": client_text.split("(PostgreSQL)")[-1].strip(), "postgresql_server": version},
        }

    # verify ---------------------------------------------------------------------------------

    def check(self, plaintext: BinaryIO, manifest: dict, workdir: Path) -> dict:
        """``pg_restore --list`` of the stream must succeed and list every table of the manifest.

        pg_restore reads the archive's table of contents and stops; the rest of the stream
        is still read to its end by the caller, whose sha256 covers every data block.
        """
        entries = self.list_objects(plaintext, manifest, workdir)
        source = manifest["source"]
        partitioned = set(source.get("partitioned_tables", []))
        missing = []
        for name in source["tables"]:
            schema, table = _split(name)
            if not any(e["type"] == "TABLE" and e["name"] == f"{schema} {table}" for e in entries):
                missing.append(name)
            elif name not in partitioned and not any(e["type"] == "TABLE DATA" and e["name"] == f"{schema} {table}" for e in entries):
                missing.append(f"{name} (data)")
        if missing:
            raise VerificationFailed(
                f"backup {manifest['backup_id']}: pg_restore --list does not list table(s) {', '.join(missing[:5])}",
                "the archive is incomplete; use another backup", check="pg-restore-list")
        return {"tables_checked": len(source["tables"]), "archive_entries": len(entries)}

    def list_objects(self, plaintext: BinaryIO, manifest: dict, workdir: Path | None = None) -> list[dict]:
        """The archive's table of contents (``pg_restore --list``) read from the stream."""
        out = Path(workdir or "/tmp") / f"toc-{secrets.token_hex(4)}.txt"
        try:
            with open(out, "wb") as fh:
                outcome = pipes.feed_into([tool("pg_restore"), "--list"], plaintext, env=dsn.child_env(dsn.Server("postgres", "", 0, "", "")),
                                          what="pg_restore --list",
                                          stdout=fh)
            text = out.read_text("utf-8", "replace")
        finally:
            out.unlink(missing_ok=True)
        if outcome.returncode != 0:
            raise VerificationFailed(f"backup {manifest['backup_id']}: pg_restore --list failed: {pipes.last_lines(outcome.stderr)}",
                                     "the archive is damaged; use another backup", check="pg-restore-list")
        return parse_toc(text)

    # restore to a file (--to PATH) ------------------------------------------------------------

    def restore(self, plaintext: BinaryIO | None, manifest: dict, dest: Path, *, force: bool, dry_run: bool) -> dict:
        """The archive itself as a file, for pg_restore by hand (``--to PATH``)."""
        summary = {"restored_to": str(dest), "format": "pg_dump custom archive", "tables": manifest["source"]["tables"],
                   "next_step": f"pg_restore -d DATABASE {dest}"}
        return restore_single_file(plaintext, dest, summary, force=force, dry_run=dry_run)

    # restore into a database (--to-database NAME) ---------------------------------------------

    def database_state(self, server: Server, database: str) -> dict:
        conn = connect(server.on(server.database or MAINTENANCE_DB), what=f"restore to {server.address}")
        try:
            conn.autocommit = True
            cur = conn.cursor()
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,))
            exists = cur.fetchone() is not None
        finally:
            conn.close()
        tables = 0
        if exists:
            conn = connect(server.on(database), what=f"restore to {server.address}")
            try:
                tables = len(list_tables(conn.cursor()))
            finally:
                conn.close()
        return {"exists": exists, "tables": tables}

    def list_databases(self, server: Server, prefix: str) -> list[str]:
        conn = connect(server.on(server.database or MAINTENANCE_DB), what=f"listing databases on {server.address}")
        try:
            cur = conn.cursor()
            cur.execute("SELECT datname FROM pg_database WHERE starts_with(datname, %s) ORDER BY 1", (prefix,))
            return [r[0] for r in cur.fetchall()]
        finally:
            conn.close()

    def create_database(self, server: Server, database: str, manifest: dict) -> None:
        encoding = manifest["source"].get("encoding") or "UTF8"
        self._admin(server, f"CREATE DATABASE {quote_ident(database)} TEMPLATE template0 ENCODING '{encoding}'")

    def drop_database(self, server: Server, database: str, *, force_disconnect: bool = True) -> None:
        self._admin(server, f"DROP DATABASE IF EXISTS {quote_ident(database)}" + (" WITH (FORCE)" if force_disconnect else ""))

    def _rename_database(self, server: Server, old: str, new: str) -> None:
        self._admin(server, f"ALTER DATABASE {quote_ident(old)} RENAME TO {quote_ident(new)}")

    def _admin(self, server: Server, statement: str) -> None:
        import psycopg2

        conn = connect(server.on(server.database or MAINTENANCE_DB), what=f"restore on {server.address}")
        try:
            conn.autocommit = True
            conn.cursor().execute(statement)
        except psycopg2.Error as exc:
            raise SourceError(f"on {server.address}: {statement.split(' WITH')[0]}: {str(exc).strip()}",
                              "check the restoring user's privileges (CREATEDB) and that nobody is connected to the database") from None
        finally:
            conn.close()

    def load(self, plaintext: BinaryIO, manifest: dict, server: Server, *, jobs: int = 1, tables: tuple[str, ...] = (),
             workdir: Path, deadline: float | None = None, before_load: Callable[[], None] | None = None,
             keep_owners: bool = False) -> dict:
        """pg_restore the stream into ``server.database`` (which exists and is empty).

        With jobs == 1 pg_restore reads the pipe in one transaction; with more, the
        plaintext goes to a private temporary file first (pg_restore -j needs to seek), and
        ``before_load`` (the digest check) runs before pg_restore starts.
        """
        ownership = [] if keep_owners else ["--no-owner", "--no-acl"]  # owners and GRANTs need the source's roles
        argv = [tool("pg_restore"), "--exit-on-error", *ownership, "--no-password", "-d", server.database]
        if tables:
            schemas = {_split(t)[0] for t in tables}
            if len(schemas) > 1:
                raise InputError("--table names from more than one schema", "restore one schema's tables at a time")
            schema = schemas.pop()
            if schema != "public":
                self._run_sql(server, f"CREATE SCHEMA IF NOT EXISTS {quote_ident(schema)}")
            argv += ["-n", schema]
            for name in tables:
                argv += ["-t", _split(name)[1]]
        what = f"pg_restore into {server.database} on {server.address}"
        with dsn.pg_env(server) as env:
            if jobs > 1:
                archive = Path(workdir) / "restore.pgdump"
                fd = os.open(archive, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                try:
                    with os.fdopen(fd, "wb") as fh:
                        shutil.copyfileobj(plaintext, fh, defaults.CHUNK_SIZE)
                    if before_load:
                        before_load()
                    done = subprocess.run([*argv, "-j", str(jobs), str(archive)], env=env, capture_output=True, text=True,
                                          timeout=None if deadline is None else max(1.0, deadline - _now()))
                    outcome = pipes.Outcome(done.returncode, done.stderr)
                except subprocess.TimeoutExpired:
                    raise pipes.DeadlineExceeded(f"{what} ran past its deadline and was stopped", "raise the time limit") from None
                finally:
                    archive.unlink(missing_ok=True)
            else:
                outcome = pipes.feed_into([*argv, "--single-transaction"], plaintext, env=env, what=what, deadline=deadline)
        if outcome.returncode != 0:
            raise SourceError(f"{what} failed: {pipes.last_lines(outcome.stderr, secret=server.password)}",
                              "see the message; the half-restored database was removed")
        return {"jobs": jobs, "tables_selected": list(tables), "streamed": jobs == 1, "owners_and_grants": keep_owners}

    def apply_globals(self, server: Server, sql: bytes, globals_report: dict, *, dry_run: bool, force: bool = False) -> dict:
        """Run the backup's ``pg_dumpall --globals-only`` on ``server`` (roles, then tablespaces).

        Roles and tablespaces the server lacks are created in full. Existing ones (always at
        least the bootstrap superuser) are kept as they are unless ``force``, which resets
        them to the backup's state (cluster_globals.py). CREATE of an existing one fails with
        "already exists", which is expected; any other error stops the restore before the
        database is touched.
        """
        conn = connect(server, what=f"restore on {server.address}")
        try:
            cur = conn.cursor()
            cur.execute("SELECT rolname FROM pg_roles")
            roles = {r[0] for r in cur.fetchall()}
            cur.execute("SELECT spcname FROM pg_tablespace")
            spaces = {r[0] for r in cur.fetchall()}
        finally:
            conn.close()
        wanted_roles, wanted_spaces = globals_report.get("roles", []), globals_report.get("tablespaces", [])
        plan = {"roles_created": [r for r in wanted_roles if r not in roles], "roles_existing": [r for r in wanted_roles if r in roles],
                "tablespaces_created": [t for t in wanted_spaces if t not in spaces],
                "tablespaces_existing": [t for t in wanted_spaces if t in spaces], "role_passwords": globals_report.get("role_passwords"),
                "existing": "reset to the backup's" if force else "kept as they are (--force resets them to the backup's)"}
        text = sql.decode("utf-8")
        if not force:
            text, plan["statements_skipped"] = cluster_globals.keeping_existing(text, roles, spaces)
        if dry_run:
            return plan
        what = f"applying the globals (roles, tablespaces) on {server.address}"
        with dsn.pg_env(server) as env:
            done = subprocess.run([tool("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=0", "--no-password", "-d", server.database],
                                  input=text.encode("utf-8"), env=env, capture_output=True)
        errors = [ln for ln in done.stderr.decode(errors="replace").splitlines() if "ERROR:" in ln]
        unexpected = [ln for ln in errors if "already exists" not in ln]
        if done.returncode != 0 or unexpected:
            raise SourceError(f"{what} failed: {'; '.join(unexpected[:3]) or pipes.last_lines(done.stderr.decode(errors='replace'))}",
                              "fix the cause (e.g. create the tablespace directories), or restore without --with-globals")
        return {**plan, "already_existed_errors": len(errors)}

    def _run_sql(self, server: Server, statement: str) -> None:
        conn = connect(server, what=f"restore on {server.address}")
        try:
            conn.autocommit = True
            conn.cursor().execute(statement)
        finally:
            conn.close()

    def table_counts(self, server: Server) -> dict[str, int]:
        conn = connect(server, what=f"counting rows in {server.database} on {server.address}")
        try:
            conn.set_session(isolation_level="REPEATABLE READ", readonly=True)
            cur = conn.cursor()
            return count_rows(cur, list_tables(cur))
        finally:
            conn.close()

    def health_check(self, server: Server, sql: str, *, timeout_seconds: float = 300) -> object:
        """Run one read-only health-check query; return the first column of its first row."""
        import psycopg2

        conn = connect(server, what=f"health check on {server.database}")
        try:
            conn.set_session(readonly=True)
            cur = conn.cursor()
            cur.execute(f"SET statement_timeout = {int(timeout_seconds * 1000)}")
            try:
                cur.execute(sql)
                row = cur.fetchone() if cur.description else None
            except psycopg2.Error as exc:
                return _CheckError(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
            return row[0] if row else None
        finally:
            conn.close()

    def refuse_occupied(self, server: Server, database: str, state: dict | None = None) -> None:
        """RestoreRefused if ``database`` exists and has tables (the caller has no --force)."""
        state = state or self.database_state(server, database)
        if state["exists"] and state["tables"] > 0:
            raise RestoreRefused(f"database '{database}' on {server.address} exists and has {state['tables']} table(s); refusing to overwrite it",
                                 "restore into a new database name, or pass --force to replace it")

    def restore_database(self, plaintext: BinaryIO | None, manifest: dict, database: str, server: Server, *, force: bool,
                         dry_run: bool, jobs: int = 1, tables: tuple[str, ...] = (), workdir: Path,
                         commit_check: Callable[[], None] | None = None, keep_owners: bool = False) -> dict:
        """Restore into ``database`` on ``server`` via a staging database; see the module docstring."""
        check_database_name(database)
        state = self.database_state(server, database)
        occupied = state["exists"] and state["tables"] > 0
        base = {"database": database, "server": server.address, "database_exists": state["exists"],
                "existing_tables": state["tables"], "tables": manifest["source"]["tables"]}
        if dry_run:
            entries = self.list_objects(plaintext, manifest, workdir)
            return {**base, "needs_force": occupied and not force, "object_count": len(entries),
                    "objects": [f"{e['type']} {e['name']}" for e in entries]}
        if occupied and not force:
            self.refuse_occupied(server, database, state)
        staging = f"{database[:40]}_restoring_{secrets.token_hex(4)}"
        self.create_database(server, staging, manifest)
        try:
            loaded = self.load(plaintext, manifest, server.on(staging), jobs=jobs, tables=tables, workdir=workdir,
                               before_load=commit_check if jobs > 1 else None, keep_owners=keep_owners)
            if commit_check and jobs == 1:
                commit_check()  # the stored and plaintext sha256 matched: only now does the name appear
            if state["exists"]:
                self.drop_database(server, database, force_disconnect=False)
            self._rename_database(server, staging, database)
        except BaseException:
            try:
                self.drop_database(server, staging)
            except Exception:  # noqa: BLE001 - never hide the restore's own error
                log.exception("could not drop staging database %s on %s", staging, server.address)
            raise
        return {**base, "replaced_existing": state["exists"], **loaded}


class _CheckError(str):
    """A health-check query that raised: its message, which counts as 'not true'."""


def check_database_name(name: str) -> None:
    if not NAME_RE.match(name or ""):
        raise InputError(f"'{name}' is not a database name this command accepts",
                         "use 1-63 letters, digits, '_', '$' or '-', starting with a letter, digit or '_'")


def parse_toc(text: str) -> list[dict]:
    """Entries of ``pg_restore --list``: ``214; 1259 16388 TABLE public orders postgres``."""
    entries = []
    for line in text.splitlines():
        if not line.strip() or line.startswith(";"):
            continue
        match = re.match(r"^\s*(\d+);\s+\d+\s+\d+\s+(.*)$", line)
        if not match:
            continue
        rest = match.group(2)
        for kind in _TOC_TYPES:
            if rest.startswith(kind + " "):
                body = rest[len(kind) + 1:]
                # the owner is the last word; what remains is "schema name" (or "- name" for schemaless objects)
                name, _, owner = body.rpartition(" ")
                entries.append({"id": int(match.group(1)), "type": kind, "name": name or body, "owner": owner if name else ""})
                break
        else:
            entries.append({"id": int(match.group(1)), "type": rest.split(" ", 1)[0], "name": rest, "owner": ""})
    return entries


#: longest first, so "TABLE DATA" is not read as "TABLE"
_TOC_TYPES = sorted([
    "TABLE DATA", "TABLE", "SEQUENCE SET", "SEQUENCE OWNED BY", "SEQUENCE", "VIEW", "MATERIALIZED VIEW DATA", "MATERIALIZED VIEW",
    "INDEX", "FK CONSTRAINT", "CONSTRAINT", "TRIGGER", "FUNCTION", "PROCEDURE", "SCHEMA", "EXTENSION", "COMMENT", "TYPE",
    "DEFAULT", "RULE", "ACL", "DOMAIN", "AGGREGATE", "BLOB", "BLOBS", "ENCODING", "STDSTRINGS", "SEARCHPATH",
], key=len, reverse=True)


def _now() -> float:
    import time

    return time.monotonic()


register(PostgresSource())
