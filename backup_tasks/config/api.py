"""The ``[api]`` table of the targets file: bearer tokens (as hashes), restore roots, body limit.

    [api]
    restore_roots = ["/srv/restore"]      # restore destinations must resolve inside one of these
    max_body_bytes = 1048576              # a larger request body gets 413
    [api.tokens]
    deploy-bot = { hash = "sha256:<64 hex>", role = "operator" }

Tokens are stored as ``sha256:<hex>`` of the token. A slow password hash (argon2,
scrypt) exists to protect guessable secrets; our tokens are 32 random bytes
(``backupctl api token``), so a preimage search over 2^256 values is hopeless whatever
the hash, and every request pays only a microsecond to check one instead of ~100 ms.
The loader (config/loader.py) calls :func:`parse` at load time.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backup_tasks import defaults
from backup_tasks.config.checks import NAME_RE, unknown_keys
from backup_tasks.errors import ConfigError

#: ordered: each role may do everything the roles before it may
ROLES = ("viewer", "operator", "admin")
HASH_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
#: the audit log's actor for calls without a valid token is api:anonymous
RESERVED_NAME = "anonymous"
FIELDS = {"tokens", "restore_roots", "max_body_bytes"}
TOKEN_FIELDS = {"hash", "role"}


@dataclass(frozen=True)
class ApiToken:
    name: str
    hash: str
    role: str

    def allows(self, required: str) -> bool:
        """Roles are cumulative: an admin may do what an operator and a viewer may."""
        return ROLES.index(self.role) >= ROLES.index(required)


@dataclass(frozen=True)
class ApiConfig:
    tokens: dict[str, ApiToken] = field(default_factory=dict)
    restore_roots: tuple[Path, ...] = ()
    max_body_bytes: int = defaults.API_MAX_BODY_BYTES


def hash_token(token: str) -> str:
    return "sha256:" + hashlib.sha256(token.encode("utf-8")).hexdigest()


def parse(table: Any, base: Path, file: str) -> ApiConfig:
    """Validate ``[api]`` completely; every error names the field and what to write instead."""
    if not isinstance(table, dict):
        raise ConfigError("[api] must be a table", file=file, where="[api]")
    unknown_keys(table, FIELDS, file=file, where="[api]")
    tokens = _tokens(table.get("tokens", {}), file)
    roots = table.get("restore_roots", [])
    if not isinstance(roots, list) or not all(isinstance(r, str) and r for r in roots):
        raise ConfigError("must be a list of directory paths", 'restore_roots = ["/srv/restore"]', file=file, where="[api]",
                          field="restore_roots")
    resolved = []
    for root in roots:
        path = (base / Path(root).expanduser()).resolve()
        if path == Path(path.anchor):
            raise ConfigError(f"'{root}' is the filesystem root: every path would be a restore destination",
                              "name a directory reserved for restores, e.g. /srv/restore", file=file, where="[api]",
                              field="restore_roots")
        resolved.append(path)
    limit = table.get("max_body_bytes", defaults.API_MAX_BODY_BYTES)
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1024 <= limit <= 16 << 20:
        raise ConfigError(f"'{limit}' is not a size between 1024 and 16777216 bytes",
                          f"the default is {defaults.API_MAX_BODY_BYTES}; request bodies are small JSON documents",
                          file=file, where="[api]", field="max_body_bytes")
    return ApiConfig(tokens=tokens, restore_roots=tuple(dict.fromkeys(resolved)), max_body_bytes=limit)


def _tokens(table: Any, file: str) -> dict[str, ApiToken]:
    if not isinstance(table, dict):
        raise ConfigError("must be a table of named tokens", 'tokens = { ci = { hash = "sha256:...", role = "operator" } }',
                          file=file, where="[api]", field="tokens")
    tokens: dict[str, ApiToken] = {}
    owners: dict[str, str] = {}
    for name, spec in table.items():
        where = f"[api.tokens] '{name}'"
        if not NAME_RE.match(name):
            raise ConfigError(f"invalid token name '{name}'", "use 1-63 letters, digits, '.', '_' or '-'; it is the actor "
                              "name in the audit log", file=file, where=where)
        if name == RESERVED_NAME:
            raise ConfigError(f"the token name '{name}' is reserved", "the audit log writes api:anonymous for calls "
                              "without a valid token; choose another name", file=file, where=where)
        if not isinstance(spec, dict):
            raise ConfigError("must be a table", f'{name} = {{ hash = "sha256:...", role = "viewer" }}', file=file, where=where)
        unknown_keys(spec, TOKEN_FIELDS, file=file, where=where)
        digest, role = spec.get("hash"), spec.get("role")
        if not isinstance(digest, str) or not HASH_RE.match(digest):
            raise ConfigError("missing or malformed token hash" if digest else "missing token hash",
                              "write hash = \"sha256:<64 lowercase hex>\" as printed by: backupctl api token --name "
                              f"{name} --role viewer (never the token itself)", file=file, where=where, field="hash")
        if role not in ROLES:
            raise ConfigError(f"unknown role '{role}'" if role else "missing role", f"use one of: {', '.join(ROLES)}",
                              file=file, where=where, field="role")
        if digest in owners:
            raise ConfigError(f"the same token hash as '{owners[digest]}'",
                              "give every client its own token, so the audit log can tell them apart", file=file,
                              where=where, field="hash")
        owners[digest] = name
        tokens[name] = ApiToken(name=name, hash=digest, role=role)
    return tokens
