"""Small side files of a backup, sealed into its signed manifest (PostgreSQL globals).

Why inside the manifest. A backup is one artifact plus its manifest; retention, cleanup,
rebuild and every tier's conformance suite know that shape. A side file of a few KiB
(``pg_dumpall --globals-only``: roles with their password hashes, tablespaces) rides in
the manifest instead: age-encrypted to the same recipients as the artifact, base64, and
covered by the manifest's Ed25519 signature. It leaves with the backup and cannot be
swapped. Without our code it is still one pipeline away::

    jq -r '.attachments["globals.sql"].data' manifest.json | base64 -d | age -d -i identity.txt > globals.sql

A source writes attachments as files into ``workdir/attachments/``; the dump stage seals
them (the plaintext never outlives the stage) and the upload stage puts them into the
manifest. The catalog keeps only their size and sha256 (:func:`summary`).
"""

from __future__ import annotations

import base64
import hashlib
import io
from pathlib import Path

import pyrage

from backup_tasks.errors import PermanentError, VerificationFailed

DIRECTORY = "attachments"
ENCODING = "age+base64"
#: a manifest is read whole; globals of a cluster with thousands of roles are a few MiB at most
MAX_BYTES = 8 << 20


def collect(workdir: Path, recipients: list, *, target: str) -> dict[str, dict]:
    """Seal every file a source left in ``workdir/attachments``; refuse to keep one in plaintext."""
    folder = Path(workdir) / DIRECTORY
    if not folder.is_dir():
        return {}
    sealed = {}
    for path in sorted(folder.iterdir()):
        data = path.read_bytes()
        if len(data) > MAX_BYTES:
            raise PermanentError(f"target '{target}': attachment {path.name} is {len(data)} bytes, over the {MAX_BYTES}-byte limit",
                                 "this is far larger than any cluster's globals; report it")
        if not recipients:
            raise PermanentError(
                f"target '{target}': {path.name} holds role password hashes and must be encrypted, but no recipients are configured",
                "set recipients in [settings] (backupctl keys generate makes a key pair), or drop options.globals")
        sealed[path.name] = seal(data, recipients)
    return sealed


def seal(data: bytes, recipients: list) -> dict:
    out = io.BytesIO()
    pyrage.encrypt_io(io.BytesIO(data), out, recipients)
    return {"encoding": ENCODING, "size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
            "data": base64.b64encode(out.getvalue()).decode("ascii")}


def unseal(doc: dict, name: str, identities: list) -> bytes:
    """The attachment's plaintext, proven against the signed manifest's size and sha256."""
    entry = (doc.get("attachments") or {}).get(name)
    if entry is None:
        raise PermanentError(f"backup {doc['backup_id']} has no attachment {name}",
                             "it was taken without options.globals; use a backup that has it (backupctl show ID)")
    try:
        ciphertext = base64.b64decode(entry["data"], validate=True)
        out = io.BytesIO()
        pyrage.decrypt_io(io.BytesIO(ciphertext), out, identities)
    except Exception as exc:  # noqa: BLE001 - binascii / pyrage errors name nothing useful
        raise VerificationFailed(f"backup {doc['backup_id']}: attachment {name} does not decrypt ({type(exc).__name__})",
                                 "the manifest's attachment is damaged or for another key; use another backup",
                                 check="attachment") from None
    data = out.getvalue()
    if len(data) != entry["size"] or hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise VerificationFailed(f"backup {doc['backup_id']}: attachment {name} does not match its signed sha256",
                                 "use another backup", check="attachment")
    return data


def summary(attachments: dict) -> dict:
    """What the catalog keeps: no ciphertext."""
    return {name: {k: v for k, v in entry.items() if k != "data"} for name, entry in attachments.items()}
