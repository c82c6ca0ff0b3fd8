"""The contract every source kind fulfils, and the registry that maps kinds to them.

A source knows how to read one kind of thing consistently (dump), how to prove that a
plaintext stream is a complete copy of it (check), and how to put it back safely
(restore). It knows nothing of compression, encryption, storage or Celery: the
pipeline hands it plain byte streams.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol

if TYPE_CHECKING:
    from backup_tasks.config import Target


class Source(Protocol):
    kind: str
    #: the plaintext format, used in artifact names so a human knows what the bytes are
    suffix: str
    #: whether the target may be stored without encryption
    allows_plaintext: bool

    def dump(self, target: "Target", out: BinaryIO, workdir: Path) -> dict:
        """Write a consistent plaintext copy of the target to ``out``.

        Returns the source report (JSON-able) that goes into the manifest: what the
        source said about itself, e.g. per-table row counts or the file list with
        sha256. ``workdir`` is private scratch space in the run's staging directory.
        """

    def check(self, plaintext: BinaryIO, manifest: dict, workdir: Path) -> dict:
        """Read the whole plaintext stream and prove it matches the manifest's report.

        Raises VerificationFailed(check=...) naming the first failed check; returns a
        summary of what was checked.
        """

    def restore(self, plaintext: BinaryIO, manifest: dict, dest: Path, *, force: bool, dry_run: bool) -> dict:
        """Write the backup to ``dest``; refuse (RestoreRefused) to overwrite without ``force``.

        With ``dry_run`` nothing is written and the summary lists what would be.
        """


_REGISTRY: dict[str, Source] = {}


def register(source: Source) -> Source:
    _REGISTRY[source.kind] = source
    return source


def source_for(kind: str) -> Source:
    # Imported here so that registering is a side effect of importing the package once.
    import backup_tasks.sources  # noqa: F401

    try:
        return _REGISTRY[kind]
    except KeyError:
        from backup_tasks.errors import ConfigError

        raise ConfigError(
            f"unknown source kind '{kind}'",
            f"use one of: {', '.join(sorted(_REGISTRY))}",
        ) from None


def known_kinds() -> list[str]:
    import backup_tasks.sources  # noqa: F401

    return sorted(_REGISTRY)
