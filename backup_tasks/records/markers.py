"""Signed documents stored beside a backup's artifact: its manifest, verified.json, drilled.json.

Each says something the catalog must be able to relearn from storage alone (what was
stored, that it was verified, that a drill restored it), so each is signed and written
to every tier that holds a copy. The caller hands in its way to reach a tier, because
this layer knows nothing of storage.
"""

from __future__ import annotations

import io
from typing import Any, BinaryIO, Callable, Iterable, Protocol

from backup_tasks.records import manifest
from backup_tasks.records.keys import Signer


class _Writable(Protocol):
    def put(self, key: str, stream: BinaryIO) -> object: ...


def write(name: str, fields: dict[str, Any], *, target: str, backup_id: str, tiers: Iterable[str], signer: Signer,
          storage: Callable[[str], _Writable]) -> dict[str, Any]:
    """Sign ``fields`` as backup ``backup_id``'s document ``name`` and put it on each tier; return the signed document.

    ``storage(tier)`` opens a tier by name. Writing again overwrites with the same key, so
    a redelivered writer does no harm.
    """
    doc = manifest.sign({"format": manifest.FORMAT, "backup_id": backup_id, **fields}, signer)
    body = manifest.dumps(doc)
    key = f"{manifest.prefix(target, backup_id)}/{name}"
    for tier in tiers:
        storage(tier).put(key, io.BytesIO(body))
    return doc
