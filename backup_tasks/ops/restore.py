"""Restore: one command on the bad night, and it must not make things worse.

Data is written into a private sibling of the destination and moved into place only
after the stored and plaintext hashes matched the signed manifest, so a damaged or
swapped artifact never lands half-written over anything. Existing data is replaced only
with ``force``.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import tempfile
from pathlib import Path

from backup_tasks import credentials
from backup_tasks.records import attachments, keys
from backup_tasks.ops import chain_restore, listing_store, readback
from backup_tasks.stages import counting as progress_mod
from backup_tasks.errors import InputError, RestoreRefused
from backup_tasks.ops.runtime import Runtime
from backup_tasks.sources.base import source_for
from backup_tasks.sources.db import dsn
from backup_tasks.sources.postgres.cluster_globals import GLOBALS_FILE

log = logging.getLogger(__name__)


def restore_backup(rt: Runtime, backup_id: str, dest: Path | str, *, force: bool = False, dry_run: bool = False,
                   progress: progress_mod.Callback | None = None, strip_source_path: bool = False, paths: tuple[str, ...] = ()) -> dict:
    """Restore files, config or SQLite to ``dest``; ``progress`` hears the plaintext bytes restored.

    ``dest`` given as a string ending in '/' means "into this directory", like an existing
    directory does: a SQLite backup then lands there under its original file name.
    ``strip_source_path`` (files and config) drops the roots' common directory from
    every restored path. An incremental or differential, or any files backup restored
    with ``paths`` (only those paths and what is below them), is rebuilt from its tree
    listing and its chain.
    """
    row = rt.catalog.get(backup_id)
    found = readback.locate(rt, row)
    doc = found.doc
    source = source_for(doc["kind"])
    into_directory = isinstance(dest, str) and dest.endswith(os.sep)
    dest = _destination(doc, destination_path(dest), into_directory)
    options = {}
    if strip_source_path:
        if source.suffix != "tar":
            raise InputError(f"--strip-source-path applies to files and config backups; {backup_id} is a {doc['kind']} backup",
                             "drop --strip-source-path")
        options["strip_source_path"] = True
    occupied = _occupied(dest)
    base = {"backup_id": backup_id, "target": doc["target"], "kind": doc["kind"], "destination": str(dest),
            "location": found.tier, "notes": found.notes}
    if doc.get("parent") or paths:
        if source.suffix != "tar":
            raise InputError(f"--path selects files of files and config backups; {backup_id} is a {doc['kind']} backup",
                             "restore it whole, without --path")
        if strip_source_path:
            raise InputError("--strip-source-path cannot yet be combined with --path or with an incremental or differential backup",
                             "restore without --strip-source-path, then move the restored tree up")
        return _restore_from_listing(rt, found, dest, base, occupied, paths=tuple(paths), force=force, dry_run=dry_run)
    with listing_store.archive_listing(rt, found) as listing:  # files: what the archive is compared with
        if listing is not None:
            options["listing"] = listing
        if dry_run:
            summary = source.restore(None, doc, dest, force=True, dry_run=True, **options)
            return {**base, "dry_run": True, "destination_not_empty": occupied, "needs_force": occupied and not force, **summary}
        if occupied and not force:
            raise RestoreRefused(
                f"{dest} exists and is not empty; refusing to overwrite it",
                "restore into an empty or new path, or pass --force to replace what is there",
            )
        dest.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Cut the name: the destination's own name may already be as long as the filesystem allows.
        staging = dest.parent / f".{dest.name[:64]}.restoring-{secrets.token_hex(4)}"
        if source.suffix == "tar":
            staging.mkdir(mode=0o700)
        try:
            with readback.plaintext(rt, found) as (stream, stored, plain):
                stream = progress_mod.reading(stream, progress, "restore", doc["plaintext"]["size"])
                summary = source.restore(stream, doc, staging, force=False, dry_run=False, **options)
                plain.drain()
            readback.check_digests(doc, stored, plain)
            _commit(staging, dest)
        finally:
            _remove(staging)
        if "next_step" in summary:  # the source named the private sibling it wrote; people need the final path
            summary["next_step"] = summary["next_step"].replace(str(staging), str(dest))
        return {**base, "dry_run": False, **summary, "restored_to": str(dest)}


def _restore_from_listing(rt: Runtime, found, dest: Path, base: dict, occupied: bool, *, paths: tuple[str, ...],
                          force: bool, dry_run: bool) -> dict:
    """The whole chain checked before anything is written, then written into a private sibling and moved in."""
    with chain_restore.planned(rt, found, paths) as planned:
        if dry_run:
            return {**base, "dry_run": True, "destination_not_empty": occupied, "needs_force": occupied and not force,
                    **planned.dry_run(dest)}
        if occupied and not force:
            raise RestoreRefused(f"{dest} exists and is not empty; refusing to overwrite it",
                                 "restore into an empty or new path, or pass --force to replace what is there")
        dest.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        staging = dest.parent / f".{dest.name[:64]}.restoring-{secrets.token_hex(4)}"
        staging.mkdir(mode=0o700)
        try:
            summary = planned.write(staging)
            _commit(staging, dest)
        finally:
            _remove(staging)
    return {**base, "dry_run": False, **summary, "restored_to": str(dest)}


def destination_path(dest: Path | str) -> Path:
    """``dest`` made absolute; InputError if a component or the whole is longer than the filesystem allows.

    Checked before anything is created, so the answer is a clear refusal (exit 2, HTTP
    400) and not an OSError halfway through.
    """
    path = Path(dest).expanduser().absolute()
    name_max, path_max = _limits(path)
    for part in path.parts:
        if len(os.fsencode(part)) > name_max:
            raise InputError(f"restore destination has a path component of {len(os.fsencode(part))} bytes ('{part[:40]}...'); "
                             f"the filesystem allows {name_max}", "choose a shorter name")
    if len(os.fsencode(str(path))) >= path_max:
        raise InputError(f"restore destination is {len(os.fsencode(str(path)))} bytes long; the filesystem allows {path_max - 1}",
                         "choose a shorter path")
    return path


def _limits(path: Path) -> tuple[int, int]:
    existing = next((p for p in (path, *path.parents) if _exists(p)), Path("/"))
    try:
        return os.pathconf(existing, "PC_NAME_MAX"), os.pathconf(existing, "PC_PATH_MAX")
    except (OSError, ValueError):
        return 255, 4096


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:  # ENAMETOOLONG: the very thing being checked
        return False


def _destination(doc: dict, dest: Path, into_directory: bool = False) -> Path:
    """A SQLite backup restored 'to a directory' (existing, or named with a trailing '/') lands there under its original file name."""
    if doc["kind"] == "sqlite" and (into_directory or dest.is_dir()):
        return dest / Path(doc["source"].get("database", f"{doc['target']}.sqlite")).name
    if doc["kind"] != "sqlite" and dest.exists() and not dest.is_dir():
        raise InputError(f"{dest} is a file; a {doc['kind']} backup restores into a directory", "pass a directory to --to")
    return dest


def _occupied(dest: Path) -> bool:
    if dest.is_dir():
        return any(os.scandir(dest))
    return dest.exists() and dest.stat().st_size > 0


def _commit(staging: Path, dest: Path) -> None:
    """Move the verified restore into place; with --force, entries it brings replace existing ones."""
    if staging.is_file() or not dest.exists():
        os.replace(staging, dest)
        return
    if dest.is_dir() and not any(os.scandir(dest)):
        dest.rmdir()
        os.replace(staging, dest)
        return
    for entry in os.scandir(staging):
        _merge(Path(entry.path), dest / entry.name)


def _merge(src: Path, dst: Path) -> None:
    """Put ``src`` at ``dst``: directories merge, anything else is replaced, links are never followed.

    A symlink or file standing where the backup has a directory is removed first (the
    link itself, never what it points to), as tar does: rename(2) cannot put a directory
    over a non-directory, and recursing into a link would write outside the destination.
    """
    src_is_dir = src.is_dir() and not src.is_symlink()
    if src_is_dir and dst.is_dir() and not dst.is_symlink():
        for entry in os.scandir(src):
            _merge(Path(entry.path), dst / entry.name)
        shutil.copystat(src, dst, follow_symlinks=False)
        return
    if dst.is_dir() and not dst.is_symlink():
        shutil.rmtree(dst)
    elif src_is_dir and os.path.lexists(dst):
        dst.unlink()
    os.replace(src, dst)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


# -- into a database (--to-database) -------------------------------------------------------------


def restore_to_database(rt: Runtime, backup_id: str, database: str, *, server: str | None = None,
                        server_password: str | None = None, force: bool = False, dry_run: bool = False, jobs: int = 1,
                        tables: tuple[str, ...] = (), with_globals: bool = False,
                        progress: progress_mod.Callback | None = None) -> dict:
    """Restore a postgres/mysql backup into ``database`` on a server, streaming from storage.

    download → decrypt → decompress → pg_restore/mysql through pipes; the source refuses
    a database that has tables unless ``force`` and gives the restored data its name only
    after the stored and plaintext sha256 matched the signed manifest (see the sources).
    """
    row = rt.catalog.get(backup_id)
    found = readback.locate(rt, row)
    doc = found.doc
    source = source_for(doc["kind"])
    if (doc.get("source") or {}).get("mode") == "physical":
        raise InputError(f"backup {backup_id} is a physical base backup of a whole cluster, not a database dump",
                         "restore it with backupctl restore --target T --to-time TIME --to-datadir DIR (or --to PATH for the tar)")
    if not hasattr(source, "restore_database"):
        raise InputError(f"backup {backup_id} is a {doc['kind']} backup; --to-database restores postgres and mysql backups",
                         "use --to PATH for files, config and SQLite backups")
    if jobs < 1:
        raise InputError("--jobs must be at least 1", "e.g. --jobs 2")
    srv = database_server(rt, doc, server, server_password)
    applied = None
    if with_globals:
        # Roles first: the restored objects then keep their owners and GRANTs. But not before the
        # database restore is known to be allowed: a refused restore must leave the cluster as it was.
        sql = _globals_sql(rt, doc)  # only PostgreSQL backups taken with options.globals have them
        if not dry_run and not force:
            source.refuse_occupied(srv, database)
        applied = source.apply_globals(srv, sql, doc["source"]["globals"], dry_run=dry_run, force=force)
    base = {"backup_id": backup_id, "target": doc["target"], "kind": doc["kind"], "location": found.tier, "notes": found.notes}
    if force and not dry_run and not getattr(source, "restores_via_staging_database", False):
        state = source.database_state(srv, database)
        if state["exists"] and state["tables"] > 0:
            _prove_before_replacing(rt, found, database)
            base["notes"] = [*base["notes"], f"read and checked in full before '{database}' was replaced in place"]
    workdir = Path(tempfile.mkdtemp(prefix=f"restore-{backup_id}-", dir=rt.staging_root()))
    try:
        with readback.plaintext(rt, found) as (stream, stored, plain):
            def commit_check() -> None:
                plain.drain()
                stored.drain()
                readback.check_digests(doc, stored, plain)

            if not dry_run:
                stream = progress_mod.reading(stream, progress, "restore", doc["plaintext"]["size"])
            summary = source.restore_database(stream, doc, database, srv, force=force, dry_run=dry_run, jobs=jobs,
                                              tables=tuple(tables), workdir=workdir, commit_check=None if dry_run else commit_check,
                                              **({"keep_owners": True} if with_globals else {}))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return {**base, "dry_run": dry_run, **summary, **({"globals": applied} if with_globals else {}),
            **({} if dry_run else {"restored_to": f"{srv.address}/{database}"})}


def _prove_before_replacing(rt: Runtime, found, database: str) -> None:
    """One full read (decrypt, decompress, both sha256) before a forced in-place restore.

    MySQL cannot rename a database, so a forced restore loads over the existing one and
    the stream's hashes are only known at its end: a damaged artifact would already have
    replaced good data. Reading it once first costs a verify's time and proves it.
    """
    with readback.plaintext(rt, found) as (stream, stored, plain):
        plain.drain()
        stored.drain()
        readback.check_digests(found.doc, stored, plain)
    log.info("backup %s read and checked in full before replacing database %s", found.doc["backup_id"], database)


def extract_globals(rt: Runtime, backup_id: str, dest: Path, *, force: bool = False, dry_run: bool = False) -> dict:
    """Write a PostgreSQL backup's globals (roles, tablespaces) as SQL to ``dest``, 0600, for review or psql."""
    row = rt.catalog.get(backup_id)
    doc = readback.locate(rt, row).doc
    dest = Path(dest)
    report = {"backup_id": backup_id, "target": doc["target"], "destination": str(dest), "dry_run": dry_run,
              "roles": (doc["source"].get("globals") or {}).get("roles"), "tablespaces": (doc["source"].get("globals") or {}).get("tablespaces")}
    sql = _globals_sql(rt, doc)
    if dest.exists() and not force:
        if dry_run:
            return {**report, "needs_force": True}
        raise RestoreRefused(f"{dest} exists; refusing to overwrite it", "choose another file, or pass --force to replace it")
    if dry_run:
        return {**report, "bytes": len(sql)}
    dest.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.restoring")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # role password hashes
    with os.fdopen(fd, "wb") as fh:
        fh.write(sql)
    os.replace(tmp, dest)
    return {**report, "bytes": len(sql), "restored_to": str(dest)}


def _globals_sql(rt: Runtime, doc: dict) -> bytes:
    if doc["kind"] != "postgres" or GLOBALS_FILE not in (doc.get("attachments") or {}):
        raise InputError(f"backup {doc['backup_id']} carries no globals (roles, tablespaces)",
                         "only PostgreSQL backups taken with options.globals have them; check with backupctl show ID")
    identities = keys.identities_for(rt.settings.identities_file, doc["encryption"]["recipients"])
    return attachments.unseal(doc, GLOBALS_FILE, identities)


def database_server(rt: Runtime, doc: dict, server: str | None, password_ref: str | None):
    """The server to restore onto: ``--server`` as a target name or a DSN, else the backup's own target's server.

    The password comes from ``--server-password`` (a reference) or the named target's
    ``password``; the connection's database is the engine's maintenance database.
    """
    kind = doc["kind"]
    source = source_for(kind)
    if password_ref is not None:
        credentials.check_syntax(password_ref, file="", where="--server-password", field="server-password")
    if server is None or server in rt.config.targets:
        name = server or doc["target"]
        if name not in rt.config.targets:
            raise InputError(f"target '{name}' of backup {doc['backup_id']} is not in {rt.config.file}, so its server is unknown",
                             "name the server: --server postgresql://user@host:5432/postgres --server-password env:NAME")
        target = rt.target(name)
        if target.kind != kind:
            raise InputError(f"target '{name}' is a {target.kind} target; backup {doc['backup_id']} is {kind}", "name a server of the same kind")
        srv = dsn.parse(target.dsn or "", kind, where=f"target '{name}'").on(source.maintenance_db)
        ref = password_ref or target.password
    else:
        srv = dsn.parse(server, kind, where="--server", field_name="server")
        srv = srv.on(srv.database or source.maintenance_db)
        ref = password_ref
    return dsn.with_password(srv, ref, where="restore server", field_name="password")
