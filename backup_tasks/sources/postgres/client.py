"""Reaching a PostgreSQL server: its client tools, a psycopg2 connection, its errors in plain words, names.

The dump and the restore side both connect, run pg_* tools and quote names; what
PostgreSQL's messages mean for an operator (wrong password, no such database, server
down) is said once, in ``_RULES``.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from backup_tasks.errors import (
    ConfigError,
    InputError,
    PermanentError,
    ServiceUnavailable,
)
from backup_tasks.sources.db import connection, dsn
from backup_tasks.sources.db.version import VersionAsked
from backup_tasks.sources.db.connection import Rule
from backup_tasks.sources.db.dsn import Server

MAINTENANCE_DB = "postgres"
NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_$-]{0,62}$")

#: first match wins; anything else is a SourceError quoting the server
_RULES = (
    Rule("{what} failed: password authentication failed for user '{user}' on {where}",
         "check the password behind {ref} and pg_hba.conf on {host}",
         any_of=("password authentication failed", "no password supplied", "authentication failed")),
    Rule("{what} failed: database '{database}' does not exist on {where}",
         "check the database name in the DSN (psql -l lists them)", all_of=("does not exist", "database")),
    Rule("{what} failed: role '{user}' does not exist on {where}", "check the user in the DSN", all_of=("role", "does not exist")),
    Rule("{what} failed: PostgreSQL on {where} is unreachable: {text}", "is PostgreSQL on {where} up and reachable from this worker?",
         any_of=("connection refused", "could not connect", "timeout expired", "could not translate host name",
                 "no route to host", "network is unreachable", "server closed the connection", "the database system is starting up",
                 "the database system is shutting down"),
         error=ServiceUnavailable),
)


#: Debian's /usr/bin/pg_* are links to this Perl script, which picks a version's binary under
#: ``DEBIAN_BINROOT`` and execs it; starting Perl costs 50-80 ms before the tool itself starts
DEBIAN_WRAPPER = "pg_wrapper"
DEBIAN_BINROOT = Path("/usr/lib/postgresql")


def tool(name: str, bin_dir: str | None = None) -> str:
    if bin_dir:
        path = Path(bin_dir) / name
        if not os.access(path, os.X_OK):
            raise ConfigError(f"{path} is not an executable", "check options.bin_dir", field="options.bin_dir")
        return str(path)
    found = shutil.which(name)
    if not found:
        raise PermanentError(f"{name} is not installed on this worker", "install the PostgreSQL client tools (Debian: postgresql-client)")
    return unwrapped(found, name)


def unwrapped(found: str, name: str, binroot: Path = DEBIAN_BINROOT) -> str:
    """The binary Debian's pg_wrapper would exec for ``name``, else ``found`` itself.

    Given a server host (PGHOST, which every dump and restore sets), pg_wrapper runs the
    newest installed version's binary: the same one is run here without the wrapper's
    Perl start-up, which sat in front of every pg_dump and of verify's pg_restore. It also
    means ``--version`` is asked of the very binary that dumps, whatever the environment.
    """
    if Path(os.path.realpath(found)).name != DEBIAN_WRAPPER:
        return found
    versions = []
    for path in binroot.glob(f"*/bin/{name}"):
        try:
            version = tuple(int(part) for part in path.parent.parent.name.split("."))
        except ValueError:
            continue
        if os.access(path, os.X_OK):
            versions.append((version, str(path)))
    return max(versions)[1] if versions else found


def tool_version(path: str, env: dict | None = None) -> str:
    return VersionAsked(path, env).answer()


def connect(server: Server, *, what: str, ref: str | None = None):
    """A psycopg2 connection, or a typed error that names the server and never the password."""
    import psycopg2

    return connection.connect(lambda: psycopg2.connect(**dsn.psycopg2_kwargs(server)), psycopg2.OperationalError,
                              lambda message: classify(message, server, what=what, ref=ref))


def classify(message: str, server: Server, *, what: str, ref: str | None = None) -> Exception:
    return connection.classify(message, server, _RULES, fallback_remedy="see the PostgreSQL server log", what=what, ref=ref)


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def qualified(schema: str, table: str) -> str:
    return f"{schema}.{table}"


def split_name(name: str) -> tuple[str, str]:
    """``schema.table`` as (schema, table); a bare name is in ``public``."""
    schema, dot, table = name.partition(".")
    return (schema, table) if dot else ("public", name)


def check_database_name(name: str) -> None:
    if not NAME_RE.match(name or ""):
        raise InputError(f"'{name}' is not a database name this command accepts",
                         "use 1-63 letters, digits, '_', '$' or '-', starting with a letter, digit or '_'")


def run_sql(server: Server, statement: str) -> None:
    """One statement in autocommit on ``server.database`` (CREATE SCHEMA, DROP DATABASE...)."""
    conn = connect(server, what=f"restore on {server.address}")
    try:
        conn.autocommit = True
        conn.cursor().execute(statement)
    finally:
        conn.close()
