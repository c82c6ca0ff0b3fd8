"""Credentials, the boto3 session and the clients an s3 tier talks through.

Credentials are references (README: Configure): ``env:NAME`` reads
``NAME_ACCESS_KEY_ID`` and ``NAME_SECRET_ACCESS_KEY`` (and ``NAME_SESSION_TOKEN`` if
set); ``file:/path`` names a 0600 file of ``name = value`` lines with
``access_key_id``, ``secret_access_key`` and optionally ``session_token`` (an ``aws_``
prefix, as in ``~/.aws/credentials``, and ``[section]`` lines are accepted). Without a
reference boto3's own chain applies (instance role, ``~/.aws``). They are resolved when
the first request is made and live only inside the boto3 client; no message, result
or repr carries them.

boto3 and botocore are imported when the first client is made, so a host whose tiers
are all on disk never loads them.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, Callable

from backup_tasks import credentials as credentials_mod
from backup_tasks.errors import ConfigError
from backup_tasks.storage.s3.multipart import CONCURRENCY


def s3_credentials(ref: str | None, *, tier: str) -> dict[str, str]:
    """boto3 keyword arguments for a credential reference (empty: boto3's own chain)."""
    if not ref:
        return {}
    kind, _, name = ref.partition(":")
    where = f"tier '{tier}'"
    if kind == "env":
        wanted = {"aws_access_key_id": f"{name}_ACCESS_KEY_ID", "aws_secret_access_key": f"{name}_SECRET_ACCESS_KEY"}
        missing = [var for var in wanted.values() if not os.environ.get(var)]
        if missing:
            raise ConfigError(f"credential reference '{ref}' does not resolve: {', '.join(missing)} not set",
                              f"export {' and '.join(wanted.values())} in the worker's environment", where=where,
                              field="credentials")
        out = {arg: os.environ[var] for arg, var in wanted.items()}
        if os.environ.get(f"{name}_SESSION_TOKEN"):
            out["aws_session_token"] = os.environ[f"{name}_SESSION_TOKEN"]
        return out
    issue = credentials_mod.problem(ref)
    if issue:
        raise ConfigError(f"credential reference '{ref}' does not resolve: {issue[0]}", issue[1], where=where, field="credentials")
    values: dict[str, str] = {}
    for line in Path(name).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")) or "=" not in line:
            continue
        field, _, value = line.partition("=")
        field = field.strip().lower().removeprefix("aws_")
        if field in ("access_key_id", "secret_access_key", "session_token"):
            values[f"aws_{field}"] = value.strip().strip('"')
    if not values.get("aws_access_key_id") or not values.get("aws_secret_access_key"):
        raise ConfigError(f"credential file {name} lacks access_key_id or secret_access_key",
                          "write two lines: access_key_id = ... and secret_access_key = ...", where=where, field="credentials")
    return values


_SESSION_LOCK = threading.Lock()
_SESSION = None


def _session():
    """One boto3 session per process: it caches the parsed service model (~10 MiB), so every
    tier and every client after the first costs nothing to create."""
    global _SESSION
    if _SESSION is None:
        import boto3

        _SESSION = boto3.session.Session()
    return _SESSION


def client_factory(*, tier: str, endpoint: str | None, region: str | None, path_style: bool,
                   credentials: str | None) -> Callable[..., Any]:
    """``make_client(timeout=None)`` for one tier: the backup client, or with ``timeout`` a probe's.

    Retries: botocore makes at most one quick retry of a request (none for a probe);
    RetryingStorage, the wrapper every tier gets, does the backoff.
    """

    def make_client(timeout: float | None = None):
        from botocore.config import Config

        config = Config(
            s3={"addressing_style": "path" if path_style else "auto"},
            retries={"total_max_attempts": 1 if timeout else 2, "mode": "standard"},
            connect_timeout=timeout or 5, read_timeout=timeout or 120, max_pool_connections=CONCURRENCY + 4,
            request_checksum_calculation="when_required", response_checksum_validation="when_required",
        )
        with _SESSION_LOCK:  # boto3 sessions are not thread-safe while creating clients
            return _session().client("s3", endpoint_url=endpoint, region_name=region or "us-east-1", config=config,
                                     **s3_credentials(credentials, tier=tier))

    return make_client
