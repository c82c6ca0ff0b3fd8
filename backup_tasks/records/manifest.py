"""The manifest: a signed, self-describing record stored next to every artifact.

It is written last and is the commit marker: an artifact without one is debris. It is
signed because age proves the bytes were encrypted to our recipients but not who wrote
them; the signature covers the stored object's sha256, so a swapped artifact is caught.
The catalog is only an index over manifests and can be rebuilt from them.
"""

from __future__ import annotations

import json
import platform
from importlib import metadata
from typing import TYPE_CHECKING, Any

from backup_tasks import __version__
from backup_tasks.errors import VerificationFailed

if TYPE_CHECKING:  # the catalog imports this module for summary(); a command that only reads it needs no cryptography
    from backup_tasks.records.keys import Signer, Verifier

FORMAT = "backup-tasks/manifest/1"
MANIFEST_NAME = "manifest.json"
VERIFIED_NAME = "verified.json"
#: a passed restore drill, signed; retention protects the newest drill-proven backup, and a
#: rebuilt catalog must still know which one that is
DRILLED_NAME = "drilled.json"


def prefix(target: str, backup_id: str) -> str:
    """Storage prefix of one backup; deterministic so a redelivered upload overwrites itself."""
    return f"{target}/{backup_id}"


def backup_of_key(key: str) -> tuple[str, str] | None:
    """(target, backup id) of an object stored under a backup's ``prefix``, else None.

    The inverse of ``prefix``: ``"db/<id>/data.zst"`` gives ``("db", "<id>")``; a key
    not nested that deep is no backup's object.
    """
    parts = key.split("/")
    if len(parts) >= 3 and parts[0] and parts[1]:
        return parts[0], parts[1]
    return None


def manifest_key(target: str, backup_id: str) -> str:
    return f"{prefix(target, backup_id)}/{MANIFEST_NAME}"


def verified_key(target: str, backup_id: str) -> str:
    return f"{prefix(target, backup_id)}/{VERIFIED_NAME}"


def drilled_key(target: str, backup_id: str) -> str:
    return f"{prefix(target, backup_id)}/{DRILLED_NAME}"


def canonical(doc: dict[str, Any]) -> bytes:
    body = {k: v for k, v in doc.items() if k != "signature"}
    # ASCII escapes: file names that are not valid UTF-8 survive as \\udcxx escapes.
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def sign(doc: dict[str, Any], signer: Signer) -> dict[str, Any]:
    signed = dict(doc)
    signed["signature"] = {"alg": "ed25519", "key_id": signer.key_id, "value": signer.sign(canonical(doc))}
    return signed


def check_signature(doc: dict[str, Any], verifier: Verifier, *, backup_id: str) -> None:
    sig = doc.get("signature")
    if not isinstance(sig, dict) or sig.get("alg") != "ed25519":
        raise VerificationFailed(
            f"backup {backup_id}: the manifest is not signed",
            "an unsigned manifest cannot be trusted; use another backup",
            check="manifest-signature",
        )
    verifier.verify(canonical(doc), sig["value"], sig["key_id"], backup_id=backup_id)


def parse(raw: bytes, *, backup_id: str) -> dict[str, Any]:
    try:
        doc = json.loads(raw)
    except ValueError:
        raise VerificationFailed(f"backup {backup_id}: manifest is not valid JSON", "use another location or backup", check="manifest-format") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise VerificationFailed(
            f"backup {backup_id}: manifest format {doc.get('format') if isinstance(doc, dict) else '?'} is not {FORMAT}",
            "read it with the backup-tasks version that wrote it",
            check="manifest-format",
        )
    if doc.get("backup_id") != backup_id:
        raise VerificationFailed(
            f"backup {backup_id}: the manifest describes {doc.get('backup_id')!r}",
            "the manifest was moved or swapped; do not trust this location",
            check="manifest-identity",
        )
    return doc


def dumps(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, indent=1, sort_keys=True, ensure_ascii=True).encode()


def summary(doc: dict[str, Any]) -> dict[str, Any]:
    """The manifest without its per-file list: what the catalog keeps (a tree can list 100k files)."""
    out = {k: v for k, v in doc.items() if k != "signature"}
    source = dict(out.get("source", {}))
    if "files" in source:
        source["files"] = f"{len(source['files'])} entries (in the stored manifest)"
    out["source"] = source
    if "attachments" in out:
        from backup_tasks.records.attachments import summary as attachment_summary  # pyrage: only for a manifest with attachments

        out["attachments"] = attachment_summary(out["attachments"])
    return out


def tool_versions(extra: dict[str, str] | None = None) -> dict[str, str]:
    import zstandard  # only a backup run asks, and it has loaded zstandard already; catalog readers need not

    versions = {
        "backup-tasks": __version__,
        "python": platform.python_version(),
        "zstandard": zstandard.__version__,
        "pyrage": metadata.version("pyrage"),
    }
    versions.update(extra or {})
    return versions
