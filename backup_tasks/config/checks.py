"""Field checks shared by every table of the targets file.

Each raises ConfigError naming the file, the table and the field, so a typo is reported
where the operator wrote it, whatever table it is in.
"""

from __future__ import annotations

import re
from typing import Any, Iterator

from backup_tasks.errors import ConfigError

#: target, tier and token names: they become queue names, storage key prefixes and audit actors
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


def unknown_keys(table: dict, allowed: set[str], *, file: str, where: str) -> None:
    """Refuse a key outside ``allowed``, suggesting the closest allowed one."""
    for key in table:
        if key not in allowed:
            import difflib  # only for a typo: every command loads this file, few have one

            close = difflib.get_close_matches(key, allowed, n=1)
            raise ConfigError(
                f"unknown field '{key}'",
                f"did you mean '{close[0]}'?" if close else f"allowed fields: {', '.join(sorted(allowed))}",
                file=file, where=where, field=key,
            )


def check_name(name: str, what: str, *, file: str) -> None:
    if not NAME_RE.match(name):
        raise ConfigError(
            f"invalid {what} name '{name}'",
            "use 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit",
            file=file, where=f"{what} '{name}'",
        )


def named_tables(table: dict, what: str, file: str) -> Iterator[tuple[str, dict, str]]:
    """(name, spec, where) for each [<what>s.<name>] table, names checked and unique ignoring case."""
    seen: dict[str, str] = {}
    for name, spec in table.items():
        check_name(name, what, file=file)
        where = f"{what} '{name}'"
        if name.lower() in seen:
            raise ConfigError(f"duplicate {what} name (also '{seen[name.lower()]}')", f"{what} names must differ in more than case",
                              file=file, where=where)
        seen[name.lower()] = name
        if not isinstance(spec, dict):
            raise ConfigError("must be a table", file=file, where=where)
        yield name, spec, where


def str_list(value: Any, *, file: str, where: str, field: str) -> list[str]:
    """A string or a list of strings, as a list."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError("must be a list of strings", file=file, where=where, field=field)
    return value
