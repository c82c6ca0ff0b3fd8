"""What of a ``pg_dumpall --globals-only`` may touch a cluster that already has roles.

Applied as it is, the globals reset every existing role to the backup's state: its
password, attributes, settings and memberships. On an empty cluster after a disaster
that is the point; on a live one it overwrites what ops changed since the backup (a
rotated password, a revoked membership), which a restore must never do without
``--force``. So without it, statements about roles and tablespaces that already exist
are left out: the missing ones are created in full, the existing ones are kept as they
are, and the restore reports which ones it kept.

The dump is split into statements with quotes tracked (a comment or a password may hold
a ``;`` or a newline); psql meta-commands (``\\restrict``, ``\\connect``) and comments pass through.
"""

from __future__ import annotations

import re

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
