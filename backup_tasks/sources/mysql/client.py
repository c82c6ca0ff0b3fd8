"""Reaching a MySQL or MariaDB server: its client tools, a pymysql connection, its errors in plain words, names.

MariaDB ships ``mariadb-dump``/``mariadb`` and still answers to the MySQL names on most
hosts; a host with only MySQL has only those. The first one installed is used.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from backup_tasks.errors import InputError, PermanentError, ServiceUnavailable
from backup_tasks.sources.db import connection, dsn
from backup_tasks.sources.db.connection import Rule
from backup_tasks.sources.db.dsn import Server

NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_$-]{0,63}$")

#: first match wins; anything else is a SourceError quoting the server
_RULES = (
    Rule("{what} failed: access denied for user '{user}' on {where} (wrong password or host not allowed)",
         "check the password behind {ref} and the user's host grants on {host}", any_of=("1045", "access denied for user")),
    Rule("{what} failed: database '{database}' does not exist on {where}",
         "check the database name in the DSN (SHOW DATABASES lists them)", any_of=("1049", "unknown database")),
    Rule("{what} failed: MySQL/MariaDB on {where} is unreachable: {text}", "is the server on {where} up and reachable from this worker?",
         any_of=("2003", "2002", "2013", "can't connect", "lost connection", "connection refused", "timed out",
                 "name or service not known"),
         error=ServiceUnavailable),
)


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
    """A pymysql connection, or a typed error that names the server and never the password."""
    import pymysql

    return connection.connect(lambda: pymysql.connect(**dsn.pymysql_kwargs(server, database=database)), pymysql.err.MySQLError,
                              lambda message: classify(message, server, what=what, ref=ref))


def classify(message: str, server: Server, *, what: str, ref: str | None = None) -> Exception:
    return connection.classify(message, server, _RULES, fallback_remedy="see the message and the server's error log", what=what, ref=ref)


def quote_ident(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def check_database_name(name: str) -> None:
    if not NAME_RE.match(name or ""):
        raise InputError(f"'{name}' is not a database name this command accepts",
                         "use 1-64 letters, digits, '_', '$' or '-', starting with a letter, digit or '_'")


def base_tables(cur, database: str) -> list[str]:
    """The database's tables (not views), by name."""
    cur.execute("SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s AND TABLE_TYPE = 'BASE TABLE' "
                "ORDER BY TABLE_NAME", (database,))
    return [r[0] for r in cur.fetchall()]


def count_rows(cur, tables: list[str]) -> dict[str, int]:
    out = {}
    for table in tables:
        cur.execute(f"SELECT COUNT(*) FROM {quote_ident(table)}")
        out[table] = int(cur.fetchone()[0])
    return out
