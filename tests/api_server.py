"""A real HTTP API for the tests: ``backupctl api serve`` (uvicorn) in its own process on a free port.

Tokens are made the way an operator makes them: random, with only their sha256 in the
config file. ``ApiServer.client(role)`` is an httpx client carrying that role's token;
``client(None)`` carries none.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from backup_tasks.config.api import ROLES, hash_token
from processes import stop_group


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_tokens(roles=ROLES) -> dict[str, str]:
    """role -> a fresh token; the token name is the role's name."""
    return {role: "bt_" + secrets.token_urlsafe(32) for role in roles}


def api_table(tokens: dict[str, str], *, restore_roots: list[Path] = (), max_body_bytes: int | None = None) -> str:
    roots = ", ".join(f'"{root}"' for root in restore_roots)
    lines = ["[api]", f"restore_roots = [{roots}]"]
    if max_body_bytes is not None:
        lines.append(f"max_body_bytes = {max_body_bytes}")
    lines.append("[api.tokens]")
    lines += [f'{role} = {{ hash = "{hash_token(token)}", role = "{role}" }}' for role, token in tokens.items()]
    return "\n".join(lines) + "\n"


class ApiServer:
    def __init__(self, config: Path, tokens: dict[str, str], log: Path, env: dict | None = None) -> None:
        self.tokens = tokens
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        argv = [sys.executable, "-m", "backup_tasks.cli", "--config", str(config), "api", "serve",
                "--host", "127.0.0.1", "--port", str(self.port)]
        self.proc = subprocess.Popen(argv, env={**os.environ, **(env or {})}, stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self._wait_ready()

    def _wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"backupctl api serve exited {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                httpx.get(f"{self.url}/openapi.json", timeout=1)
                return
            except httpx.TransportError:
                time.sleep(0.05)
        raise RuntimeError(f"API not answering after {timeout}s:\n{self.log.read_text()}")

    def client(self, role: str | None, *, token: str | None = None) -> httpx.Client:
        token = token or (self.tokens[role] if role else None)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=f"{self.url}/api/v1", headers=headers, timeout=120)

    def stop(self) -> None:
        stop_group(self.proc)
