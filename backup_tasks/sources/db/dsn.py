"""Database server addresses (DSNs) and how a password reaches a client tool.

A DSN in the targets file names a server and a database, never a password:
``postgresql://backup@db01:5432/school`` or ``mysql://backup@db02:3306/shop``. The
password is a credential reference (``env:`` / ``file:``) resolved on the worker at the
moment of use and handed to subprocesses through a private 0600 file named in the
environment (``PGPASSFILE``) or as the first option (``--defaults-extra-file``), so it
never appears in a process list (``/proc/*/cmdline`` is world-readable) nor in the
environment of the child either.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator
from urllib.parse import parse_qsl, unquote, urlsplit

from backup_tasks import credentials
from backup_tasks.errors import ConfigError
from backup_tasks.sources.tool_env import tool_env

SCHEMES = {
    "postgres": ("postgresql", "postgres"),
    "mysql": ("mysql", "mariadb"),
}
DEFAULT_PORTS = {"postgres": 5432, "mysql": 3306}
DEFAULT_USERS = {"postgres": "postgres", "mysql": "root"}
#: how long a client waits for a server to answer before we call it unreachable
CONNECT_TIMEOUT_SECONDS = 10


@dataclass(frozen=True)
class Server:
    """One database server plus a database on it; ``password`` is a resolved secret or None.

    ``repr`` and ``label`` never show the password.
    """

    engine: str
    host: str
    port: int
    user: str
    database: str
    params: dict = field(default_factory=dict)
    password: str | None = field(default=None, repr=False)

    @property
    def label(self) -> str:
        """What errors and reports may show: user@host:port/database."""
        return f"{self.user}@{self.host}:{self.port}/{self.database}"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def on(self, database: str) -> "Server":
        """The same server and credentials, another database."""
        return replace(self, database=database)


def parse(dsn: str, engine: str, *, where: str = "", field_name: str = "dsn") -> Server:
    """A Server without password from ``dsn``; ConfigError on anything unexpected.

    A password written into the DSN is refused: it would travel with the config and show
    in logs; the remedy names the ``password`` reference instead.
    """
    try:
        parts = urlsplit(dsn)
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"invalid DSN: {exc}", _example(engine), where=where, field=field_name) from None
    if parts.scheme not in SCHEMES[engine]:
        raise ConfigError(f"a {engine} DSN must start with {SCHEMES[engine][0]}://", _example(engine), where=where, field=field_name)
    if parts.password is not None:
        raise ConfigError("the DSN contains a password", 'remove it and set password = "env:NAME" or "file:/path" (mode 0600)',
                          where=where, field=field_name)
    if not parts.hostname:
        raise ConfigError("the DSN names no host", _example(engine), where=where, field=field_name)
    database = unquote(parts.path.lstrip("/"))
    params = dict(parse_qsl(parts.query))
    secret = sorted(k for k in params if "password" in k.lower() or k.lower() in ("sslpassword", "passfile"))
    if secret:  # password, sslpassword (the client key's passphrase), passfile: secrets or where they are
        raise ConfigError(f"the DSN contains a secret parameter ({', '.join(secret)})",
                          'remove it; the server password goes in password = "env:NAME"; keep client keys unencrypted and 0600',
                          where=where, field=field_name)
    return Server(engine=engine, host=parts.hostname, port=port or DEFAULT_PORTS[engine],
                  user=unquote(parts.username or "") or DEFAULT_USERS[engine], database=database, params=params)


def _example(engine: str) -> str:
    return ("write e.g. postgresql://backup@db01:5432/school" if engine == "postgres"
            else "write e.g. mysql://backup@db02:3306/shop")


def parse_target(target) -> Server:
    """The target's server and database, without password; ConfigError when the DSN names no database."""
    where = f"target '{target.name}'"
    server = parse(target.dsn or "", target.kind, where=where)
    if not server.database:
        raise ConfigError("the DSN names no database", _example(target.kind), where=where, field="dsn")
    return server


def for_target(target) -> Server:
    """The target's server with its password resolved (call only where the work happens)."""
    return with_password(parse_target(target), target.password, where=f"target '{target.name}'", field_name="password")


def with_password(server: Server, ref: str | None, *, where: str, field_name: str) -> Server:
    if not ref:
        return server
    return replace(server, password=credentials.resolve(ref, where=where, field=field_name))


# -- handing the password to client tools ------------------------------------------------------


@contextlib.contextmanager
def secret_dir() -> Iterator[Path]:
    """A private (0700) directory for one command's credential file, removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="backup-tasks-cred-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)


def child_env(server: Server) -> dict[str, str]:
    """The environment for this server's client tool: tool_env's allowlist, never the password."""
    return tool_env(secret=server.password)


@contextlib.contextmanager
def pg_env(server: Server) -> Iterator[dict[str, str]]:
    """Environment for pg_dump/pg_restore/psql: a 0600 PGPASSFILE, never PGPASSWORD or argv."""
    # Whatever the worker's environment says about passwords or services must not win over this.
    env = {k: v for k, v in child_env(server).items() if k not in ("PGPASSFILE", "PGSERVICE", "PGDATABASE", "PGOPTIONS")}
    env.update(PGHOST=server.host, PGPORT=str(server.port), PGUSER=server.user,
               PGCONNECT_TIMEOUT=str(CONNECT_TIMEOUT_SECONDS), PGAPPNAME="backup-tasks")
    if server.params.get("sslmode"):
        env["PGSSLMODE"] = server.params["sslmode"]
    with secret_dir() as tmp:
        passfile = tmp / "pgpass"
        line = ":".join(_pgpass_escape(v) for v in ("*", "*", "*", server.user, server.password or ""))
        _write_private(passfile, line + "\n")
        env["PGPASSFILE"] = str(passfile)
        yield env


def _pgpass_escape(value: str) -> str:
    return value if value == "*" else value.replace("\\", "\\\\").replace(":", "\\:")


@contextlib.contextmanager
def mysql_defaults_file(server: Server) -> Iterator[str]:
    """A 0600 option file for mysql/mysqldump: pass ``--defaults-extra-file=PATH`` as the FIRST argument."""
    with secret_dir() as tmp:
        path = tmp / "client.cnf"
        # (mysqldump knows no connect-timeout; our own connection, made first, has one)
        lines = ["[client]", f"user={_opt_quote(server.user)}", f"host={_opt_quote(server.host)}", f"port={server.port}"]
        if server.password is not None:
            lines.append(f"password={_opt_quote(server.password)}")
        _write_private(path, "\n".join(lines) + "\n")
        yield str(path)


def _opt_quote(value: str) -> str:
    """Option-file value in double quotes; backslash and quote escaped (my_print_defaults reads them back)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def psycopg2_kwargs(server: Server) -> dict:
    kw = dict(host=server.host, port=server.port, user=server.user, dbname=server.database or "postgres",
              connect_timeout=CONNECT_TIMEOUT_SECONDS, application_name="backup-tasks")
    if server.password is not None:
        kw["password"] = server.password
    if server.params.get("sslmode"):
        kw["sslmode"] = server.params["sslmode"]
    return kw


def pymysql_kwargs(server: Server, *, database: bool = True) -> dict:
    kw = dict(host=server.host, port=server.port, user=server.user, connect_timeout=CONNECT_TIMEOUT_SECONDS,
              charset="utf8mb4", autocommit=True)
    if server.password is not None:
        kw["password"] = server.password
    if database and server.database:
        kw["database"] = server.database
    return kw
