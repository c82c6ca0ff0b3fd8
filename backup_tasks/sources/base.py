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



class DatabaseSource(Source, Protocol):
    """A source whose backups also restore into a database on a server (postgres, mysql).

    ``server`` is a ``backup_tasks.sources.db.dsn.Server`` (host, port, user, resolved password); the
    database named in it is the one worked on. Restore, the restore drill and verify
    share these primitives, so a drill proves exactly what ``restore --to-database`` does.
    """

    #: database to connect to for CREATE/DROP DATABASE ("" when the engine needs none)
    maintenance_db: str

    def check_options(self, options: dict, *, where: str = "") -> None:
        """Raise ConfigError for target ``options`` this kind does not understand (called when the config loads)."""

    def restore_database(self, plaintext: BinaryIO | None, manifest: dict, database: str, server, *, force: bool,
                         dry_run: bool, jobs: int = 1, tables: tuple[str, ...] = (), workdir: Path,
                         commit_check=None) -> dict:
        """Restore into ``database``; refuse (RestoreRefused) one that has tables unless ``force``.

        ``commit_check`` raises when the stream's hashes do not match the signed manifest;
        it runs before the restored data is given the requested name wherever the engine
        allows. With ``dry_run`` nothing is written: the summary lists the dump's objects.
        """

    def database_state(self, server, database: str) -> dict:
        """{"exists": bool, "tables": number of tables} for ``database`` on ``server``."""

    def create_database(self, server, database: str, manifest: dict) -> None: ...

    def list_databases(self, server, prefix: str) -> list[str]:
        """Names of the server's databases that start with ``prefix`` (drills sweep their leftovers)."""

    def drop_database(self, server, database: str, *, force_disconnect: bool = True) -> None:
        """Drop if it exists; idempotent."""

    def load(self, plaintext: BinaryIO, manifest: dict, server, *, jobs: int = 1, tables: tuple[str, ...] = (),
             workdir: Path, deadline: float | None = None, before_load=None) -> dict:
        """Feed the dump into the (existing, empty) database ``server.database``."""

    def table_counts(self, server) -> dict[str, int]:
        """Exact row count of every table in ``server.database``, keyed as in the manifest."""

    def health_check(self, server, sql: str, *, timeout_seconds: float = 300) -> object:
        """First column of the first row of a read-only query (a query error comes back as a str subclass)."""


def restore_single_file(plaintext: BinaryIO | None, dest: Path, summary: dict, *, force: bool, dry_run: bool) -> dict:
    """Restore for sources whose plaintext is one file (a SQLite image, a pg_dump archive, an SQL dump).

    Refuses a non-empty ``dest`` without ``force``; writes a private temp file beside it
    and renames it into place, so ``dest`` is never seen half-written.
    """
    import os
    import shutil

    from backup_tasks import defaults
    from backup_tasks.errors import RestoreRefused

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
