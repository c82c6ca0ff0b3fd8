"""What must hold on the machine loading the targets file, checked at load and not at 02:00.

The tables can be valid while the files they name are not there: a signing key path
with a typo, a SQLite ``path`` that is a directory. Those used to pass ``backupctl
targets`` and fail mid-backup. They are checked here, for what this machine will do:
with BACKUP_HOST set, only for that host's targets (beat, Flower and the verify worker
own no target, sign nothing and hold no signing key).
"""

from __future__ import annotations

from pathlib import Path

from backup_tasks.config.model import Settings, Target
from backup_tasks.errors import ConfigError
from backup_tasks.sources.base import source_for

_SETTINGS = "[settings]"
#: what every PEM private key file starts with (the Ed25519 key of backupctl keys generate included)
_PEM_PRIVATE = b"-----BEGIN PRIVATE KEY-----"


def runs_targets(settings: Settings, targets: dict[str, Target]) -> list[Target]:
    """The targets this machine backs up: all of them without BACKUP_HOST, else its host's."""
    return [t for t in targets.values() if not settings.host or t.host == settings.host]


def check(settings: Settings, targets: dict[str, Target], file: str) -> None:
    mine = runs_targets(settings, targets)
    if mine and settings.signing_key_file:
        _check_signing_key(settings.signing_key_file, file)
    for target in mine:
        check_local = getattr(source_for(target.kind), "check_local", None)
        if check_local is None:
            continue
        try:
            check_local(target)
        except ConfigError as exc:
            # the source names the field, not the file or the target: located here
            bare = exc.message.split(": ", 1)[1] if exc.field and ": " in exc.message else exc.message
            raise ConfigError(bare, exc.remedy, file=file, where=f"target '{target.name}'", field=exc.field) from None


def _check_signing_key(path: Path, file: str) -> None:
    """Every backup this machine runs signs its manifest with this key: it must be a readable private key."""
    remedy = "point signing_key_file at the signing.key that backupctl keys generate wrote (or run it to make one)"
    try:
        with open(path, "rb") as fh:
            head = fh.read(len(_PEM_PRIVATE))
    except IsADirectoryError:
        raise ConfigError(f"{path} is a directory, not a signing key", remedy, file=file, where=_SETTINGS,
                          field="signing_key_file") from None
    except OSError as exc:
        raise ConfigError(f"cannot read the signing key {path}: {exc.strerror}", remedy, file=file, where=_SETTINGS,
                          field="signing_key_file") from None
    if head != _PEM_PRIVATE:
        raise ConfigError(f"{path} is not a PEM private key", remedy, file=file, where=_SETTINGS, field="signing_key_file")
