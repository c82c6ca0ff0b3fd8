"""Credential references: ``env:NAME`` or ``file:/path``, resolved only where they are used.

Config objects, task arguments, results and the catalog carry the reference, never the
value; the worker that runs a stage resolves it at the last moment. Errors name the
reference (which is not secret) and never the value.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from backup_tasks import redaction
from backup_tasks.errors import ConfigError

PREFIXES = ("env:", "file:")


def check_syntax(ref: str, *, file: str, where: str, field: str) -> None:
    if not isinstance(ref, str) or not ref.startswith(PREFIXES) or len(ref) <= 5:
        raise ConfigError(
            "a credential must be a reference, not a value",
            'write "env:VARIABLE" or "file:/path/to/0600-file"; never put the secret itself in the config',
            file=file, where=where, field=field,
        )


def problem(ref: str) -> tuple[str, str] | None:
    """Why ``ref`` does not resolve on this host (message, remedy), or None when it does."""
    kind, _, name = ref.partition(":")
    if kind == "env":
        if not os.environ.get(name):
            return (f"environment variable {name} is not set", f"export {name} in the service's environment file")
        return None
    path = Path(name)
    try:
        st = path.stat()
    except OSError as exc:
        return (f"credential file {path} cannot be read: {exc.strerror}", f"create {path} with mode 0600")
    if stat.S_IMODE(st.st_mode) & 0o077:
        return (
            f"credential file {path} is readable by group or others (mode {stat.S_IMODE(st.st_mode):o})",
            f"chmod 600 {path}",
        )
    if not os.access(path, os.R_OK):
        return (f"credential file {path} is not readable by this user", "chown the file to the service user")
    return None


def resolve(ref: str, *, where: str, field: str) -> str:
    """The secret behind ``ref``; raises ConfigError naming the reference if it does not resolve."""
    issue = problem(ref)
    if issue:
        raise ConfigError(issue[0], issue[1], where=where, field=field)
    kind, _, name = ref.partition(":")
    value = os.environ[name] if kind == "env" else Path(name).read_text().strip()
    redaction.remember(value)  # from now on, no error or log line of this process can carry it, in any encoding
    return value
