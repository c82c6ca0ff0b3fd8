"""A signed record beside each shipped log file (WAL segment, history file), so a rebuilt catalog relearns it.

A base backup is described by its signed manifest; a log file is too small and too
frequent for a manifest of its own, yet without a record of it the catalog, once lost,
would not know the archive holds any WAL and no restore to a moment would be possible.
So the shipping run writes ``<object key>.meta.json`` (what the catalog records for it:
name, kind, timeline, position, sizes, both sha256, keys, close time), signed like a
manifest, on every tier before recording the file; ``catalog rebuild`` trusts only a
record whose signature checks and whose object has the recorded size.
"""

from __future__ import annotations

import io
import json
from typing import Any, BinaryIO, Callable, Iterable, Protocol

from backup_tasks.errors import VerificationFailed
from backup_tasks.records import manifest
from backup_tasks.records.keys import Signer, Verifier

FORMAT = "backup-tasks/log/1"
SUFFIX = ".meta.json"


class _Writable(Protocol):
    def put(self, key: str, stream: BinaryIO) -> object: ...


def key_of(object_key: str) -> str:
    return object_key + SUFFIX


def write(fields: dict[str, Any], *, object_key: str, tiers: Iterable[str], signer: Signer,
          storage: Callable[[str], _Writable]) -> dict[str, Any]:
    """Sign ``fields`` as the record of the log object at ``object_key`` and put it beside it on each tier."""
    doc = manifest.sign({"format": FORMAT, "key": object_key, **fields}, signer)
    body = manifest.dumps(doc)
    for tier in tiers:
        storage(tier).put(key_of(object_key), io.BytesIO(body))
    return doc


def read(raw: bytes, verifier: Verifier, *, marker_key: str) -> dict[str, Any]:
    """The record stored at ``marker_key``, if it is one, is signed by a trusted key and names the object beside it."""
    try:
        doc = json.loads(raw)
    except ValueError:
        doc = None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise VerificationFailed(f"{marker_key} is not a log record of format {FORMAT}", "leave it; it is not indexed",
                                 check="log-record-format")
    if key_of(doc.get("key") or "") != marker_key:
        raise VerificationFailed(f"{marker_key} describes {doc.get('key')!r}", "the record was moved or swapped; do not trust it",
                                 check="log-record-identity")
    manifest.check_signature(doc, verifier, backup_id=doc.get("name") or marker_key)
    return doc
