"""Rotating keys: make a new key pair and say exactly how the configuration must change.

The command never edits the configuration itself: the identities file lives on restore
hosts, often another machine, and a key change is something an operator applies on
purpose. What it can write safely it writes (the new keys, and a file of trusted signing
public keys, which are public); what it cannot (private identities) it tells as commands.

The order of the change matters. The new identity goes into the identities file first,
so the first backup to the new recipient can already be verified; the old identity
stays there until ``keys status`` says nothing depends on it any more.
"""

from __future__ import annotations

from pathlib import Path

from backup_tasks.config.model import Settings
from backup_tasks.records import keys

#: public keys of every signing key whose manifests are still trusted, written beside a new signing key
TRUSTED_SIGNING_FILE = "trusted-signing.pub"


def rotate(out: Path, *, signing: bool, settings: Settings | None) -> dict:
    """Write the new keys into ``out`` and return them with the configuration change to make.

    ``settings`` are the current ones (None when no configuration could be loaded): they
    name the old key ids and the files the change applies to.
    """
    out = out.resolve()  # the targets file resolves relative paths against its own directory
    made = keys.generate(out, signing=signing)
    recipient_file = out / keys.RECIPIENT_FILE
    identity_file = out / keys.IDENTITY_FILE
    identities_file = settings.identities_file if settings else None
    settings_change: dict[str, str] = {"recipients_file": str(recipient_file)}
    steps = [f"cat {identity_file} >> {identities_file or 'IDENTITIES_FILE'}"]
    trusted: list[str] = []
    if signing:
        trusted = _trusted_signing_keys(settings) + [made.signing_public]
        trusted_file = out / TRUSTED_SIGNING_FILE
        keys.write_private(trusted_file, "".join(f"{line}\n" for line in dict.fromkeys(trusted)).encode())
        settings_change["signing_key_file"] = str(out / keys.SIGNING_KEY_FILE)
        settings_change["signing_public_key_file"] = str(trusted_file)
    return {
        "directory": str(out),
        "recipient": made.recipient,
        "recipient_key_id": made.recipient_key_id,
        "previous_recipient_key_ids": [keys.key_id(r) for r in settings.recipients] if settings else [],
        "signing_key_id": made.signing_key_id,
        "trusted_signing_key_ids": [keys.key_id(p) for p in dict.fromkeys(trusted)],
        "config_change": {
            "identities_file": {"append": str(identity_file), "to": str(identities_file) if identities_file else None,
                                "command": steps[0]},
            "settings": settings_change,
            # only the new recipient is current: a recipients list left beside recipients_file would add to it
            "remove_settings": ["recipients"],
        },
    }


def _trusted_signing_keys(settings: Settings | None) -> list[str]:
    """The signing public keys trusted now: the configured list and the current signing key's own.

    They must stay trusted after a signing key rotation, or every manifest signed so far
    would stop verifying.
    """
    if settings is None:
        return []
    publics: list[str] = []
    if settings.signing_public_key_file and Path(settings.signing_public_key_file).exists():
        publics += [ln.strip() for ln in Path(settings.signing_public_key_file).read_text().splitlines() if ln.startswith("ed25519:")]
    if settings.signing_key_file and Path(settings.signing_key_file).exists():
        publics.append(keys.Signer.from_file(Path(settings.signing_key_file)).public_text)
    return publics
