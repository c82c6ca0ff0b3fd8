"""The pg_dump side: options, the client/server version check, and the dump inside an exported snapshot.

Why a snapshot. A REPEATABLE READ transaction calls ``pg_export_snapshot()``; pg_dump
runs with ``--snapshot`` so that it sees exactly that instant, and the per-table row
counts for the manifest are taken in the same transaction while pg_dump streams. The
counts are therefore exact for the dump, not "about right" under concurrent writers,
and a restore drill can compare them with ``=``.

Why ``-Z0``. The chain's own stage compresses (zstd, multi-threaded, faster than
pg_dump's zlib), and an uncompressed custom archive is what ``pg_restore`` reads from a
pipe after ``age -d | zstd -d`` in a disaster without our code.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import BinaryIO

from backup_tasks.redaction import redact
from backup_tasks.errors import ConfigError, SourceError
from backup_tasks.sources.db import dsn, pipes
from backup_tasks.sources.db.beside import Beside
from backup_tasks.sources.postgres import cluster_globals
from backup_tasks.sources.postgres.client import (
    classify,
    connect,
    qualified,
    quote_ident,
    split_name,
    tool,
    VersionAsked,
)

OPTION_KEYS = {"schemas", "exclude_schemas", "tables", "exclude_tables", "globals", "bin_dir"}

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
    no_passwords = cluster_globals.GLOBALS_NO_ROLE_PASSWORDS
    if value not in (True, False, no_passwords):
        raise ConfigError(f"must be true, false or \"{no_passwords}\", not {value!r}",
                          f'globals = true needs a superuser; globals = "{no_passwords}" works for any role',
                          where=where, field="options.globals")
    out["globals"] = value
    out["bin_dir"] = options.get("bin_dir")
    return out


def _selected(schema: str, table: str, opts: dict) -> bool:
    name = qualified(schema, table)
    if opts["schemas"] and schema not in opts["schemas"]:
        return False
    if schema in opts["exclude_schemas"]:
        return False
    if opts["tables"] and name not in [qualified(*split_name(t)) for t in opts["tables"]]:
        return False
    return name not in [qualified(*split_name(t)) for t in opts["exclude_tables"]]


def _filter_args(opts: dict) -> list[str]:
    args: list[str] = []
    for key, flag in (("schemas", "-n"), ("exclude_schemas", "-N")):
        for schema in opts[key]:
            args += [flag, quote_ident(schema)]
    for key, flag in (("tables", "-t"), ("exclude_tables", "-T")):
        for name in opts[key]:
            schema, table = split_name(name)
            args += [flag, f"{quote_ident(schema)}.{quote_ident(table)}"]
    return args


# -- tables and their rows ------------------------------------------------------------------------


def list_tables(cur, opts: dict | None = None) -> list[tuple[str, str, str]]:
    """(schema, table, relkind) of every user table, or of those ``opts`` select."""
    cur.execute(_TABLES_SQL)
    rows = cur.fetchall()
    return [r for r in rows if opts is None or _selected(r[0], r[1], opts)]


def count_rows(cur, tables) -> dict[str, int]:
    counts = {}
    for schema, table, _kind in tables:
        cur.execute(f"SELECT count(*) FROM {quote_ident(schema)}.{quote_ident(table)}")
        counts[qualified(schema, table)] = cur.fetchone()[0]
    return counts


# -- the dump -----------------------------------------------------------------------------------


def dump(target, out: BinaryIO, workdir: Path) -> dict:
    """pg_dump ``target``'s database to ``out``; the manifest's ``source`` section."""
    opts = check_options(target.options, where=f"target '{target.name}'")
    server = dsn.for_target(target)
    what = f"dump of target '{target.name}'"
    pg_dump = tool("pg_dump", opts["bin_dir"])
    client_version = VersionAsked(pg_dump, dsn.child_env(server))
    try:
        conn = connect(server, what=what, ref=target.password)
    except BaseException:
        client_version.discard()
        raise
    try:
        conn.set_session(isolation_level="REPEATABLE READ", readonly=True)
        cur = conn.cursor()
        cur.execute("SELECT current_setting('server_version_num')::int, current_setting('server_version'), "
                    "pg_encoding_to_char(encoding), pg_export_snapshot() FROM pg_database WHERE datname = current_database()")
        version_num, version, encoding, snapshot = cur.fetchone()
        client_text = client_version.answer()
        check_client_version(client_text, version_num, target=target.name, address=server.address)
        tables = list_tables(cur, opts)
        argv = [pg_dump, "-Fc", "-Z0", "--no-password", f"--snapshot={snapshot}", "-d", server.database, *_filter_args(opts)]
        # Same transaction, same snapshot as pg_dump: the counts are exact for the dump.
        counter = Beside(lambda: count_rows(cur, tables), name=f"count-{target.name}")
        with dsn.pg_env(server) as env:
            counter.start()
            try:
                # gather: pg_dump writes 4 KiB at a time (200k writes for 0.8 GB); bigger chunks cut the
                # per-chunk hashing and Python calls by a sixth of the dump thread's CPU (measured)
                outcome = pipes.read_from(argv, out, env=env, what=f"pg_dump of target '{target.name}'", gather=True)
            finally:
                counter.wait()
            if outcome.returncode == 0 and opts["globals"]:
                cluster = cluster_globals.dump_globals(tool("pg_dumpall", opts["bin_dir"]), server, env, workdir, opts["globals"],
                                                       what=f"pg_dumpall --globals-only of target '{target.name}'", ref=target.password)
        if outcome.returncode != 0:
            raise classify(outcome.stderr, server, what=what, ref=target.password)
        try:
            counted = counter.result()
        except Exception as exc:  # noqa: BLE001 - reported after pg_dump finished
            raise SourceError(f"{what}: counting rows in the snapshot failed: {exc}", "see the PostgreSQL server log") from None
        conn.rollback()
    finally:
        client_version.discard()
        conn.close()
    return {
        "database": server.database,
        "server": server.address,
        "server_version": version,
        "encoding": encoding,
        "snapshot": snapshot,
        "format": "pg_dump custom archive, uncompressed (-Fc -Z0)",
        "tables": counted,
        "partitioned_tables": [qualified(s, t) for s, t, k in tables if k == "p"],
        "options": {k: v for k, v in opts.items() if v},
        **({"globals": cluster} if opts["globals"] else {}),
        "warnings": [redact(ln) for ln in outcome.stderr.splitlines() if ln.strip()][:20],  # the tool's words, not ours
        "tool_versions": {"pg_dump": client_text.split("(PostgreSQL)")[-1].strip(), "postgresql_server": version},
    }
