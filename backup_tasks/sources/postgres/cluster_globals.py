"""The cluster's globals (roles, tablespaces) beside a database dump: taken, filtered, applied.

With ``options.globals`` the dump also runs ``pg_dumpall --globals-only`` (roles, their
memberships and settings, tablespaces), which the pipeline seals, encrypted, into the
signed manifest (attachments.py): a whole cluster can be rebuilt from its targets'
backups. ``restore --to-database NAME --with-globals`` applies them first and then keeps
owners and GRANTs; ``restore --globals-to FILE`` writes the SQL for review. Applying
globals on a live cluster resets role passwords to the backup's, hence opt-in only.

What of them may touch a cluster that already has roles. Applied as it is, the globals
reset every existing role to the backup's state: its password, attributes, settings and
memberships. On an empty cluster after a disaster that is the point; on a live one it
overwrites what ops changed since the backup (a rotated password, a revoked
membership), which a restore must never do without ``--force``. So without it,
statements about roles and tablespaces that already exist are left out: the missing
ones are created in full, the existing ones are kept as they are, and the restore
reports which ones it kept.

The dump is split into statements with quotes tracked (a comment or a password may hold
a ``;`` or a newline); psql meta-commands (``\\restrict``, ``\\connect``) and comments pass through.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from backup_tasks.errors import SourceError
from backup_tasks.sources.db import dsn, pipes
from backup_tasks.sources.db.dsn import Server
from backup_tasks.sources.postgres.client import classify, connect, tool

#: ``globals`` value for a dump by a non-superuser: roles without their password hashes
GLOBALS_NO_ROLE_PASSWORDS = "no-role-passwords"
#: the attachment (attachments.py) holding ``pg_dumpall --globals-only``
GLOBALS_FILE = "globals.sql"

_NAME = r'("(?:[^"]|"")+"|[^\s;]+)'
#: statements that change an existing role or tablespace, and the group holding its name
_ABOUT_ROLE = [re.compile(rf"^ALTER ROLE {_NAME}"), re.compile(rf"^COMMENT ON ROLE {_NAME}"),
               re.compile(rf"^SECURITY LABEL (?:FOR \S+ )?ON ROLE {_NAME}"),
               re.compile(rf"^GRANT {_NAME} TO {_NAME}")]  # a membership changes its member (group 2)
_ABOUT_TABLESPACE = [re.compile(rf"^ALTER TABLESPACE {_NAME}"), re.compile(rf"^COMMENT ON TABLESPACE {_NAME}"),
                     re.compile(rf"^GRANT .* ON TABLESPACE {_NAME} TO", re.S),
                     re.compile(rf"^REVOKE .* ON TABLESPACE {_NAME} FROM", re.S)]


def unquote(name: str) -> str:
    return name[1:-1].replace('""', '"') if name.startswith('"') else name


def statements(sql: str) -> list[str]:
    """The dump as a list of pieces: whole SQL statements, and meta-command, comment and blank lines."""
    pieces: list[str] = []
    buffer: list[str] = []
    quote = None
    for line in sql.splitlines(keepends=True):
        if not buffer and quote is None and (line.startswith(("\\", "--")) or not line.strip()):
            pieces.append(line)
            continue
        buffer.append(line)
        for ch in line:
            if quote is None and ch in "'\"":
                quote = ch
            elif ch == quote:
                quote = None  # a doubled quote closes and reopens: the state comes out right
        if quote is None and line.rstrip().endswith(";"):
            pieces.append("".join(buffer))
            buffer = []
    if buffer:
        pieces.append("".join(buffer))
    return pieces


def keeping_existing(sql: str, roles: set[str], tablespaces: set[str]) -> tuple[str, list[str]]:
    """``sql`` without the statements that would change an existing role or tablespace.

    Returns the SQL to run and the heads of the statements left out (``ALTER ROLE app``;
    never a password).
    """
    kept, skipped = [], []
    for piece in statements(sql):
        head = _about_existing(piece, roles, tablespaces)
        if head is None:
            kept.append(piece)
        else:
            skipped.append(head)
    return "".join(kept), skipped


def _about_existing(statement: str, roles: set[str], tablespaces: set[str]) -> str | None:
    for pattern in _ABOUT_ROLE:
        found = pattern.match(statement)
        if found:
            name = unquote(found.group(found.lastindex))
            return f"{statement[:found.start(found.lastindex)].strip()} {name}" if name in roles else None
    for pattern in _ABOUT_TABLESPACE:
        found = pattern.match(statement)
        if found:
            name = unquote(found.group(1))
            return f"{statement.split()[0]} on tablespace {name}" if name in tablespaces else None
    return None


# -- taking and applying them ---------------------------------------------------------------------

_CREATE_ROLE = re.compile(r'^CREATE ROLE ("(?:[^"]|"")+"|[^\s;]+);', re.M)
_CREATE_TABLESPACE = re.compile(r'^CREATE TABLESPACE ("(?:[^"]|"")+"|\S+)', re.M)


def dump_globals(pg_dumpall: str, server: Server, env: dict, workdir: Path, mode, *, what: str, ref: str | None) -> dict:
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
    return {"roles": sorted(unquote(n) for n in _CREATE_ROLE.findall(text)),
            "tablespaces": sorted(unquote(n) for n in _CREATE_TABLESPACE.findall(text)),
            "role_passwords": mode is True, "attachment": GLOBALS_FILE}


def apply_globals(server: Server, sql: bytes, globals_report: dict, *, dry_run: bool, force: bool = False) -> dict:
    """Run the backup's ``pg_dumpall --globals-only`` on ``server`` (roles, then tablespaces).

    Roles and tablespaces the server lacks are created in full. Existing ones (always at
    least the bootstrap superuser) are kept as they are unless ``force``, which resets
    them to the backup's state (``keeping_existing``). CREATE of an existing one fails
    with "already exists", which is expected; any other error stops the restore before
    the database is touched.
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
        text, plan["statements_skipped"] = keeping_existing(text, roles, spaces)
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
