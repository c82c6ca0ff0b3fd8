"""Key material: age X25519 recipients/identities and the Ed25519 manifest signing key.

Workers hold recipients (public) and the signing key; identities (private) live only on
restore and drill hosts. A key id is a short fingerprint of a public key, so manifests
and error messages can say which key is needed without showing any key.
"""

from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pyrage import x25519

from backup_tasks.errors import ConfigError, InputError, KeyMissing, VerificationFailed

IDENTITY_FILE = "age-identity.txt"
RECIPIENT_FILE = "age-recipient.txt"
SIGNING_KEY_FILE = "signing.key"
SIGNING_PUB_FILE = "signing.pub"


def key_id(public: str) -> str:
    """Fingerprint of a public key (age recipient or signing key): safe to print anywhere."""
    return hashlib.sha256(public.strip().encode()).hexdigest()[:16]


def write_private(path: Path, data: bytes) -> None:
    """Create ``path`` 0600 from the first byte on; never overwrite existing key material."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


@dataclass(frozen=True)
class GeneratedKeys:
    directory: Path
    recipient: str
    recipient_key_id: str
    #: None when only an age key pair was made (``keys rotate`` without ``--signing``)
    signing_key_id: str | None
    signing_public: str | None = None


def generate(out: Path, *, signing: bool = True) -> GeneratedKeys:
    """Write a fresh age identity + recipient (and an Ed25519 signing key pair) into ``out`` (0700).

    Refuses a directory that already holds key material: keys that encrypted existing
    backups must never be overwritten, so a rotation always goes to a new directory.
    """
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(out, 0o700)
    existing = [n for n in (IDENTITY_FILE, RECIPIENT_FILE, SIGNING_KEY_FILE, SIGNING_PUB_FILE) if (out / n).exists()]
    if existing:
        raise InputError(
            f"{out} already holds key material ({', '.join(existing)}); refusing to overwrite it",
            "keys that encrypted existing backups must be kept: choose another --out directory",
        )
    identity = x25519.Identity.generate()
    recipient = str(identity.to_public())
    write_private(out / IDENTITY_FILE, f"# recipient: {recipient}\n{identity}\n".encode())
    write_private(out / RECIPIENT_FILE, f"{recipient}\n".encode())
    if not signing:
        return GeneratedKeys(out, recipient, key_id(recipient), None)
    private = Ed25519PrivateKey.generate()
    signing_pub = _public_text(private.public_key())
    write_private(
        out / SIGNING_KEY_FILE,
        private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    )
    write_private(out / SIGNING_PUB_FILE, f"{signing_pub}\n".encode())
    return GeneratedKeys(out, recipient, key_id(recipient), key_id(signing_pub), signing_pub)


def _public_text(key: Ed25519PublicKey) -> str:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "ed25519:" + base64.b64encode(raw).decode()


def recipients(values: tuple[str, ...]) -> list[x25519.Recipient]:
    try:
        return [x25519.Recipient.from_str(v) for v in values]
    except Exception as exc:  # pyrage raises RecipientError without naming the value
        raise ConfigError(f"invalid age recipient: {exc}", "recipients must be age1... public keys", field="recipients") from None


def load_identities(path: Path | None) -> dict[str, x25519.Identity]:
    """Identities by the key id of their recipient; an empty dict when none are configured."""
    if path is None:
        return {}
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read identities file {path}: {exc.strerror}", "check identities_file in [settings]", field="identities_file") from None
    found: dict[str, x25519.Identity] = {}
    for line in lines:
        line = line.strip()
        if line.startswith("AGE-SECRET-KEY-"):
            try:
                identity = x25519.Identity.from_str(line)
            except Exception:
                raise ConfigError(f"identities file {path} holds a malformed identity", "regenerate or restore the file from the offline copy", field="identities_file") from None
            found[key_id(str(identity.to_public()))] = identity
    return found


def identities_for(path: Path | None, needed: list[str]) -> list[x25519.Identity]:
    """The identities among ``needed`` key ids, or KeyMissing naming what to bring."""
    available = load_identities(path)
    usable = [available[k] for k in needed if k in available]
    if not usable:
        where = f"identities file {path}" if path else "this host (no identities_file configured)"
        raise KeyMissing(
            f"no identity for key id {', '.join(needed)} in {where}",
            "copy the age identity for that key id from the offline key store and set identities_file",
        )
    return usable


class Signer:
    """Signs manifests with the worker's Ed25519 key."""

    def __init__(self, private: Ed25519PrivateKey) -> None:
        self._private = private
        self.public_text = _public_text(private.public_key())
        self.key_id = key_id(self.public_text)

    @classmethod
    def from_file(cls, path: Path | None) -> "Signer":
        if path is None:
            raise ConfigError("no signing key configured", "set signing_key_file in [settings] (backupctl keys generate writes signing.key)", field="signing_key_file")
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except OSError as exc:
            raise ConfigError(f"cannot read signing key {path}: {exc.strerror}", "check signing_key_file", field="signing_key_file") from None
        except ValueError:
            raise ConfigError(f"{path} is not a PEM Ed25519 private key", "use the signing.key written by backupctl keys generate", field="signing_key_file") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise ConfigError(f"{path} is not an Ed25519 key", "use the signing.key written by backupctl keys generate", field="signing_key_file")
        return cls(key)

    def sign(self, payload: bytes) -> str:
        return base64.b64encode(self._private.sign(payload)).decode()


class Verifier:
    """Checks manifest signatures; needs only public keys, so restore hosts can hold it."""

    def __init__(self, publics: list[str]) -> None:
        self._keys = {key_id(p): Ed25519PublicKey.from_public_bytes(base64.b64decode(p.split(":", 1)[1])) for p in publics}

    @classmethod
    def from_settings(cls, signing_key_file: Path | None, signing_public_key_file: Path | None) -> "Verifier":
        publics: list[str] = []
        if signing_public_key_file:
            try:
                publics += [ln.strip() for ln in signing_public_key_file.read_text().splitlines() if ln.startswith("ed25519:")]
            except OSError as exc:
                raise ConfigError(f"cannot read {signing_public_key_file}: {exc.strerror}", "check signing_public_key_file", field="signing_public_key_file") from None
        if signing_key_file and signing_key_file.exists():
            publics.append(Signer.from_file(signing_key_file).public_text)
        if not publics:
            raise ConfigError(
                "no manifest signing key to check signatures with",
                "set signing_public_key_file (or signing_key_file) in [settings]",
                field="signing_public_key_file",
            )
        return cls(publics)

    def verify(self, payload: bytes, signature: str, signer_key_id: str, *, backup_id: str) -> None:
        key = self._keys.get(signer_key_id)
        if key is None:
            raise VerificationFailed(
                f"backup {backup_id}: manifest signed by unknown key {signer_key_id}",
                "add that signing public key to signing_public_key_file if it is yours; otherwise treat the backup as forged",
                check="manifest-signature",
            )
        try:
            key.verify(base64.b64decode(signature), payload)
        except (InvalidSignature, ValueError):
            raise VerificationFailed(
                f"backup {backup_id}: manifest signature does not match its contents",
                "the manifest was altered after it was written; do not restore from it, use another backup",
                check="manifest-signature",
            ) from None
