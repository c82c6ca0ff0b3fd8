"""The contract every source kind fulfils, and the registry that maps kinds to them.

A source knows how to read one kind of thing consistently (dump), how to prove that a
plaintext stream is a complete copy of it (check), and how to put it back safely
(restore). It knows nothing of compression, encryption, storage or Celery: the
pipeline hands it plain byte streams.
"""

from __future__ import annotations

import importlib
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol

from backup_tasks import defaults
from backup_tasks.errors import ConfigError, RestoreRefused
from backup_tasks.sources import MODULES as _MODULES

if TYPE_CHECKING:
    from backup_tasks.config import Target


class Source(Protocol):
    kind: str
    #: the plaintext format, used in artifact names so a human knows what the bytes are
    suffix: str
    #: whether the target may be stored without encryption (the config loader then requires recipients)
    allows_plaintext: bool
    #: target fields this kind cannot work without; the config loader refuses a target lacking one
    required_fields: tuple[str, ...]

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

    # A kind may also have ``check_local(target)``, which the config loader calls at load for
    # the targets of the machine loading it, to refuse what can be told on that machine
    # without reading the data (a SQLite path that is a directory); it raises ConfigError.
    #
    # A kind with ``chains = True`` (files, config) also takes ``dump(..., chain=Chain)``
    # (sources/files/changes.py): it writes a tree listing, and with a parent's listing
    # archives only what changed, which is what incremental and differential backups need.
    # A kind whose targets name a database server (one sources.db.dsn parses DSNs for) also
    # has ``check_options(options, *, where)``, which the config loader calls to refuse
    # target options the kind does not understand, and the primitives restore and drills use.


def restore_single_file(plaintext: BinaryIO | None, dest: Path, summary: dict, *, force: bool, dry_run: bool) -> dict:
    """Restore for sources whose plaintext is one file (a SQLite image, a pg_dump archive, an SQL dump).

    Refuses a non-empty ``dest`` without ``force``; writes a private temp file beside it
    and renames it into place, so ``dest`` is never seen half-written.
    """
    if dest.exists() and dest.stat().st_size > 0 and not force:
        raise RestoreRefused(f"{dest} exists and is not empty; refusing to overwrite it",
                             "restore to a new path, or pass --force to replace it")
    if dry_run:
        return {**summary, "would_write": [str(dest)]}
    dest.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.partial")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        shutil.copyfileobj(plaintext, fh, defaults.CHUNK_SIZE)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, dest)
    return summary


def plaintext_suffix(source: Source, target: "Target") -> str:
    """The artifact's suffix for this target: a kind with several modes (``suffix_for``) names each mode's format."""
    suffix_for = getattr(source, "suffix_for", None)
    return suffix_for(target) if suffix_for is not None else source.suffix


_REGISTRY: dict[str, Source] = {}


def register(source: Source) -> Source:
    """Make ``source`` the one for its kind; each source module calls this once when imported."""
    _REGISTRY[source.kind] = source
    return source


def source_for(kind: str) -> Source:
    """The source of ``kind``, its module imported (and so registered) the first time; ConfigError listing the kinds otherwise."""
    try:
        return _REGISTRY[kind]
    except (KeyError, TypeError):  # TypeError: an unhashable kind, e.g. kind = [..] in the file
        pass
    module = _MODULES.get(kind) if isinstance(kind, str) else None
    if module is not None:
        importlib.import_module(module)
        return _REGISTRY[kind]
    raise ConfigError(f"unknown source kind '{kind}'", f"use one of: {', '.join(known_kinds())}")


def known_kinds() -> list[str]:
    """Every kind, sorted (registered, or to be when first asked for)."""
    return sorted(set(_REGISTRY) | set(_MODULES))
