"""The pg_restore side: databases on a server, loading an archive, and restoring through a staging database.

Restore into a database goes through a staging database (``<name>_restoring_<hex>``):
pg_restore reads the plaintext stream from a pipe (``--single-transaction``); only after
the stored and plaintext sha256 matched the signed manifest is the staging database
renamed to the requested name, replacing an existing one only with ``force``. A parallel
restore (``jobs > 1``) loads the data from the pipe while teeing the plaintext into a
private temporary file, checks the hashes at the stream's end, then builds indexes and
constraints from that file with parallel jobs (overlapped.py). Objects are restored
owned by the restoring user, without GRANTs (``--no-owner --no-acl``), so a restore works
on a server that lacks the source's roles; with the backup's globals applied first
(cluster_globals.py), owners and GRANTs are kept.
"""

from __future__ import annotations

import logging
import re
import secrets
from pathlib import Path
from typing import BinaryIO, Callable

from backup_tasks.errors import InputError, RestoreRefused, SourceError
from backup_tasks.sources.db import dsn, health, pipes
from backup_tasks.sources.db.dsn import Server
from backup_tasks.sources.postgres import overlapped
from backup_tasks.sources.postgres.archive import list_objects
from backup_tasks.sources.postgres.client import (
    MAINTENANCE_DB,
    check_database_name,
    connect,
    quote_ident,
    run_sql,
    split_name,
    tool,
)
from backup_tasks.sources.postgres.dump import count_rows, list_tables

log = logging.getLogger(__name__)


# -- databases on a server ------------------------------------------------------------------------


def database_state(server: Server, database: str) -> dict:
    """Whether ``database`` exists on ``server`` and how many user tables it has."""
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


def list_databases(server: Server, prefix: str) -> list[str]:
    conn = connect(server.on(server.database or MAINTENANCE_DB), what=f"listing databases on {server.address}")
    try:
        cur = conn.cursor()
        cur.execute("SELECT datname FROM pg_database WHERE starts_with(datname, %s) ORDER BY 1", (prefix,))
        return [r[0] for r in cur.fetchall()]
    finally:
        conn.close()


def create_database(server: Server, database: str, manifest: dict) -> None:
    encoding = manifest["source"].get("encoding") or "UTF8"
    _admin(server, f"CREATE DATABASE {quote_ident(database)} TEMPLATE template0 ENCODING '{encoding}'")


def drop_database(server: Server, database: str, *, force_disconnect: bool = True) -> None:
    _admin(server, f"DROP DATABASE IF EXISTS {quote_ident(database)}" + (" WITH (FORCE)" if force_disconnect else ""))


def _rename_database(server: Server, old: str, new: str) -> None:
    _admin(server, f"ALTER DATABASE {quote_ident(old)} RENAME TO {quote_ident(new)}")


def _admin(server: Server, statement: str) -> None:
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


def refuse_occupied(server: Server, database: str, state: dict | None = None) -> None:
    """RestoreRefused if ``database`` exists and has tables (the caller has no --force)."""
    state = state or database_state(server, database)
    if state["exists"] and state["tables"] > 0:
        raise RestoreRefused(f"database '{database}' on {server.address} exists and has {state['tables']} table(s); refusing to overwrite it",
                             "restore into a new database name, or pass --force to replace it")


# -- loading ------------------------------------------------------------------------------------


def load(plaintext: BinaryIO, manifest: dict, server: Server, *, jobs: int = 1, tables: tuple[str, ...] = (),
         workdir: Path, deadline: float | None = None, before_load: Callable[[], None] | None = None,
         keep_owners: bool = False) -> dict:
    """pg_restore the stream into ``server.database`` (which exists and is empty).

    With jobs == 1 pg_restore reads the pipe in one transaction; with more, the data
    loads from the pipe while the plaintext is also written to a private temporary file,
    and ``before_load`` (the digest check) runs before the post-data section is restored
    from that file with ``jobs`` (overlapped.py).
    """
    ownership = [] if keep_owners else ["--no-owner", "--no-acl"]  # owners and GRANTs need the source's roles
    argv = [tool("pg_restore"), "--exit-on-error", *ownership, "--no-password", "-d", server.database]
    if tables:
        schemas = {split_name(t)[0] for t in tables}
        if len(schemas) > 1:
            raise InputError("--table names from more than one schema", "restore one schema's tables at a time")
        schema = schemas.pop()
        if schema != "public":
            run_sql(server, f"CREATE SCHEMA IF NOT EXISTS {quote_ident(schema)}")
        argv += ["-n", schema]
        for name in tables:
            argv += ["-t", split_name(name)[1]]
    what = f"pg_restore into {server.database} on {server.address}"
    with dsn.pg_env(server) as env:
        phases: dict = {}
        staged = None
        if jobs > 1:
            outcome, phases, staged = overlapped.load(plaintext, argv, jobs=jobs, env=env, workdir=workdir, what=what, deadline=deadline,
                                      before_load=before_load)
        else:
            outcome = pipes.feed_into([*argv, "--single-transaction"], plaintext, env=env, what=what, deadline=deadline)
    if outcome.returncode != 0:
        raise SourceError(f"{what} failed: {pipes.last_lines(_without_statements(outcome.stderr), secret=server.password)}",
                          "see the message; the half-restored database was removed")
    return {"jobs": jobs, "tables_selected": list(tables), "streamed": jobs == 1, "overlapped": jobs > 1,
            "owners_and_grants": keep_owners, **({"load_seconds": phases} if phases else {}),
            **({"staged_bytes": staged} if staged is not None else {})}


def _without_statements(stderr: str) -> str:
    """pg_restore's stderr without the "Command was:" statements it quotes after an error.

    A CREATE TABLE runs to many lines, and the message keeps only the last few: without
    this, it would show the end of a column list instead of the error that names the cause.
    """
    return re.sub(r"^Command was:.*?(?=^pg_restore:|\Z)", "", stderr, flags=re.S | re.M)


def restore_database(plaintext: BinaryIO | None, manifest: dict, database: str, server: Server, *, force: bool,
                     dry_run: bool, jobs: int = 1, tables: tuple[str, ...] = (), workdir: Path,
                     commit_check: Callable[[], None] | None = None, keep_owners: bool = False) -> dict:
    """Restore into ``database`` on ``server`` via a staging database; see the module docstring."""
    check_database_name(database)
    state = database_state(server, database)
    occupied = state["exists"] and state["tables"] > 0
    base = {"database": database, "server": server.address, "database_exists": state["exists"],
            "existing_tables": state["tables"], "tables": manifest["source"]["tables"]}
    if dry_run:
        entries = list_objects(plaintext, manifest, workdir)
        return {**base, "needs_force": occupied and not force, "object_count": len(entries),
                "objects": [f"{e['type']} {e['name']}" for e in entries]}
    if occupied and not force:
        refuse_occupied(server, database, state)
    staging = f"{database[:40]}_restoring_{secrets.token_hex(4)}"
    create_database(server, staging, manifest)
    try:
        loaded = load(plaintext, manifest, server.on(staging), jobs=jobs, tables=tables, workdir=workdir,
                      before_load=commit_check if jobs > 1 else None, keep_owners=keep_owners)
        if commit_check and jobs == 1:
            commit_check()  # the stored and plaintext sha256 matched: only now does the name appear
        if state["exists"]:
            drop_database(server, database, force_disconnect=False)
        _rename_database(server, staging, database)
    except BaseException:
        try:
            drop_database(server, staging)
        except Exception:  # noqa: BLE001 - never hide the restore's own error, which is re-raised below
            log.exception("could not drop staging database %s on %s", staging, server.address)
        raise
    return {**base, "replaced_existing": state["exists"], **loaded}


# -- what a drill asks of the restored database ---------------------------------------------------


def table_counts(server: Server) -> dict[str, int]:
    conn = connect(server, what=f"counting rows in {server.database} on {server.address}")
    try:
        conn.set_session(isolation_level="REPEATABLE READ", readonly=True)
        cur = conn.cursor()
        return count_rows(cur, list_tables(cur))
    finally:
        conn.close()


def health_check(server: Server, sql: str, *, timeout_seconds: float = 300) -> object:
    """Run one read-only health-check query; return the first column of its first row."""
    import psycopg2

    conn = connect(server, what=f"health check on {server.database}")
    try:
        conn.set_session(readonly=True)
        cur = conn.cursor()
        cur.execute(f"SET statement_timeout = {int(timeout_seconds * 1000)}")
        return health.first_value(cur, sql, psycopg2.Error,
                                  lambda exc: str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
    finally:
        conn.close()
