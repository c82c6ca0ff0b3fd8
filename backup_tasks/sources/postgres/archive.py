"""What a pg_dump custom archive holds, read with ``pg_restore --list`` from the plaintext stream.

A verify and a dry-run restore both need the archive's table of contents without a
server: pg_restore reads the archive's header and stops; the rest of the stream is
still read to its end by the caller, whose sha256 covers every data block.
"""

from __future__ import annotations

import re
import secrets
from pathlib import Path
from typing import BinaryIO

from backup_tasks.errors import VerificationFailed
from backup_tasks.sources.db import dsn, pipes
from backup_tasks.sources.postgres.client import split_name, tool

#: longest first, so "TABLE DATA" is not read as "TABLE"
_TOC_TYPES = sorted([
    "TABLE DATA", "TABLE", "SEQUENCE SET", "SEQUENCE OWNED BY", "SEQUENCE", "VIEW", "MATERIALIZED VIEW DATA", "MATERIALIZED VIEW",
    "INDEX", "FK CONSTRAINT", "CONSTRAINT", "TRIGGER", "FUNCTION", "PROCEDURE", "SCHEMA", "EXTENSION", "COMMENT", "TYPE",
    "DEFAULT", "RULE", "ACL", "DOMAIN", "AGGREGATE", "BLOB", "BLOBS", "ENCODING", "STDSTRINGS", "SEARCHPATH",
], key=len, reverse=True)


def list_objects(plaintext: BinaryIO, manifest: dict, workdir: Path | None = None) -> list[dict]:
    """The archive's table of contents (``pg_restore --list``) read from the stream."""
    out = Path(workdir or "/tmp") / f"toc-{secrets.token_hex(4)}.txt"
    try:
        with open(out, "wb") as fh:
            outcome = pipes.feed_into([tool("pg_restore"), "--list"], plaintext, env=dsn.child_env(dsn.Server("postgres", "", 0, "", "")),
                                      what="pg_restore --list",
                                      stdout=fh)
        text = out.read_text("utf-8", "replace")
    finally:
        out.unlink(missing_ok=True)
    if outcome.returncode != 0:
        raise VerificationFailed(f"backup {manifest['backup_id']}: pg_restore --list failed: {pipes.last_lines(outcome.stderr)}",
                                 "the archive is damaged; use another backup", check="pg-restore-list")
    return parse_toc(text)


def check(plaintext: BinaryIO, manifest: dict, workdir: Path) -> dict:
    """``pg_restore --list`` of the stream must succeed and list every table of the manifest (and its data)."""
    entries = list_objects(plaintext, manifest, workdir)
    source = manifest["source"]
    partitioned = set(source.get("partitioned_tables", []))
    missing = []
    for name in source["tables"]:
        schema, table = split_name(name)
        if not any(e["type"] == "TABLE" and e["name"] == f"{schema} {table}" for e in entries):
            missing.append(name)
        elif name not in partitioned and not any(e["type"] == "TABLE DATA" and e["name"] == f"{schema} {table}" for e in entries):
            missing.append(f"{name} (data)")
    if missing:
        raise VerificationFailed(
            f"backup {manifest['backup_id']}: pg_restore --list does not list table(s) {', '.join(missing[:5])}",
            "the archive is incomplete; use another backup", check="pg-restore-list")
    return {"tables_checked": len(source["tables"]), "archive_entries": len(entries)}


def parse_toc(text: str) -> list[dict]:
    """Entries of ``pg_restore --list``: ``214; 1259 16388 TABLE public orders postgres``."""
    entries = []
    for line in text.splitlines():
        if not line.strip() or line.startswith(";"):
            continue
        match = re.match(r"^\s*(\d+);\s+\d+\s+\d+\s+(.*)$", line)
        if not match:
            continue
        rest = match.group(2)
        for kind in _TOC_TYPES:
            if rest.startswith(kind + " "):
                body = rest[len(kind) + 1:]
                # the owner is the last word; what remains is "schema name" (or "- name" for schemaless objects)
                name, _, owner = body.rpartition(" ")
                entries.append({"id": int(match.group(1)), "type": kind, "name": name or body, "owner": owner if name else ""})
                break
        else:
            entries.append({"id": int(match.group(1)), "type": rest.split(" ", 1)[0], "name": rest, "owner": ""})
    return entries
