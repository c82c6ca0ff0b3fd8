"""backupctl backup | list | show | verify | restore."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path

import click

from backup_tasks.records import audit
from backup_tasks.records.run_status import Status
from backup_tasks.cli.context import Context, common
from backup_tasks.cli.output import print_table
from backup_tasks.cli.progress_bar import StageBar
from backup_tasks.errors import BackupError, InputError
from backup_tasks.units import human_size


@click.command("backup")
@click.argument("target")
@click.option("--type", "type_", type=click.Choice(["full", "incremental", "differential"]), default="full", show_default=True)
@click.option("--wait", is_flag=True, help="wait for the chain to finish (always so on the embedded default)")
@click.option("--timeout", type=float, default=None, help="give up waiting after this many seconds")
@click.option("--rehash", is_flag=True, help="incremental/differential: read every file and compare hashes, not metadata")
@common
def backup(ctx: Context, target, type_, wait, timeout, rehash):
    """Run (embedded) or enqueue (with a broker) the chain dump → compress → encrypt → upload → verify."""
    from backup_tasks import client
    from backup_tasks.orchestration.routing import VERIFY_QUEUE
    from backup_tasks.stages import counting

    rt = ctx.rt
    started = time.monotonic()
    bar = StageBar(ctx.out, f"backup of {target}")
    if rt.settings.embedded:  # the chain runs right here: the bar listens to its stages directly
        with bar, counting.listening(bar.update):
            run = client.enqueue_backup(target, type_, actor=audit.cli_actor(), rt=rt, rehash=rehash)
    else:
        run = client.enqueue_backup(target, type_, actor=audit.cli_actor(), rt=rt, rehash=rehash)
    ctx.out.note(f"backup {run.id} {'ran in-process' if rt.settings.embedded else 'enqueued on ' + rt.target(target).queue}")
    if not (wait or rt.settings.embedded):
        ctx.out.result(run.info(), lambda c, d: c.print(f"enqueued {d['id']} ({d['status']}, {d['stage']})"))
        return
    stages: list[str] = []

    def show(report: dict) -> None:
        if bar.enabled:
            bar.update(report)
        elif not stages or stages[-1] != report.get("stage"):  # without a terminal: one line per stage
            stages.append(report.get("stage"))
            ctx.out.note(f"  {run.id}: {report.get('stage')}")

    def no_worker(queue: str) -> None:
        if queue == VERIFY_QUEUE:  # stored and signed; only its verification waits
            ctx.out.note(f"no worker consumes {queue}; the backup is stored and waits in Redis to be verified. Start one "
                         f"on a host that can read identities_file with:\n"
                         f"  BACKUP_CONFIG={rt.config.file} celery -A backup_tasks worker -Q {queue}")
            return
        ctx.out.note(f"no worker consumes {queue}; the run waits in Redis until one does. Start one on that host with:\n"
                     f"  BACKUP_CONFIG={rt.config.file} celery -A backup_tasks worker -Q {queue},verify\n"
                     f"  (or: python -m workers.launch --host {queue.removeprefix('host.')})")

    try:
        with bar if not rt.settings.embedded else contextlib.nullcontext():
            info = run.wait(timeout, on_progress=show, on_no_worker=no_worker)
    except client.BackupFailed:
        info = run.info()
    except TimeoutError as exc:
        raise InputError(str(exc), f"check later with: backupctl show {run.id}") from None
    info["wall_seconds"] = round(time.monotonic() - started, 3)
    info["verification"] = _last_verification(rt, run.id)
    ctx.out.result(info, _print_backup)
    if info["status"] != Status.VERIFIED:
        sys.exit(1)


def _last_verification(rt, backup_id: str) -> dict | None:
    rows = rt.catalog.verifications(backup_id)
    if not rows:
        return None
    v = rows[-1]
    return {"ok": v.ok, "check": v.check, "at": v.at.isoformat(), "duration_seconds": v.duration_seconds, "detail": v.detail}


def _print_backup(c, d: dict) -> None:
    colour = "green" if d["status"] == Status.VERIFIED else "red"
    c.print(f"[bold]{d['id']}[/] [{colour}]{d['status']}[/]")
    c.print(f"  target {d['target']} ({d['kind']}) on host {d['host']}")
    if (d.get("type") and d["type"] != "full") or d.get("note"):
        c.print(f"  {d['type']} backup" + (f" on top of {d['parent']}" if d.get("parent") else ""), markup=False)
    if d.get("note"):
        c.print(f"  note: {d['note']}", markup=False)
    c.print(f"  plaintext {human_size(d.get('size_plain'))}, stored {human_size(d.get('size_stored'))}, "
            f"took {d.get('duration_seconds') or 0:.1f}s")
    for loc in d.get("locations", []):
        c.print(f"  stored on tier {loc['tier']}: {loc['key']}")
    v = d.get("verification")
    if v:
        c.print(f"  verification: {'[green]passed[/]' if v['ok'] else '[red]failed (' + str(v['check']) + ')[/]'} in {v['duration_seconds']:.1f}s")
    if d.get("error"):
        c.print(f"  [red]error:[/] {d['error']}", markup=True)


@click.command("list")
@click.option("--target", default=None)
@click.option("--status", type=click.Choice([s.value for s in Status]), default=None)
@click.option("--limit", type=int, default=None)
@common
def list_(ctx: Context, target, status, limit):
    """List catalog entries, newest first."""
    from backup_tasks.records.catalog import dumps_row  # SQLAlchemy: only for commands that read the catalog

    rt = ctx.local_rt  # reads the catalog only: no Celery to set up
    if target:
        rt.target(target)
    rows = [dumps_row(r) for r in rt.catalog.list(target=target, status=status, limit=limit)]
    shape = [{k: r[k] for k in ("id", "target", "kind", "status", "created_at", "size_stored", "locations", "verified_at",
                                "type", "parent", "size_plain", "host", "error", "key_ids")} for r in rows]

    def human(c, data):
        from rich.table import Table  # rich only when printing for people: a --json command starts without it

        table = Table("id", "target", "kind", "status", "created", "stored", "tiers", "verified")
        for r in data:
            table.add_row(r["id"], r["target"], r["kind"], r["status"], r["created_at"], human_size(r["size_stored"]),
                          ",".join(l["tier"] for l in r["locations"]), r["verified_at"] or "-")
        print_table(c, table, optional=("verified", "kind", "tiers", "stored", "created"))

    ctx.out.result(shape, human)


@click.command("show")
@click.argument("backup_id")
@click.option("--files", is_flag=True, help="include the stored manifest and the backup's per-file list (files and config)")
@common
def show(ctx: Context, backup_id, files):
    """One backup with its manifest and verification history."""
    from backup_tasks.records.catalog import dumps_row  # SQLAlchemy: only for commands that read the catalog

    rt = ctx.local_rt  # reads the catalog and storage only: no Celery to set up
    row = rt.catalog.get(backup_id)
    data = dumps_row(row)
    data["stage"] = row.stage
    data["manifest"] = row.manifest
    if files:
        from backup_tasks.ops import listing_store, readback

        found = readback.locate(rt, row)
        data["manifest"] = found.doc
        data["files"] = listing_store.file_list(rt, found)
    data["verifications"] = [{"at": v.at.isoformat(), "ok": v.ok, "check": v.check, "detail": v.detail}
                             for v in rt.catalog.verifications(backup_id)]
    ctx.out.result(data, lambda c, d: c.print_json(data=d, default=str))


@click.command("verify")
@click.argument("backup_id")
@common
def verify(ctx: Context, backup_id):
    """Full verification now, reading back from storage; exit 1 if any check fails."""
    from backup_tasks.errors import VerificationFailed
    from backup_tasks.ops.verify import verify_backup

    rt = ctx.local_rt  # verifies in this process: no Celery to set up
    row = rt.catalog.get(backup_id)
    try:
        with ctx.audited("verify", target=row.target, backup_id=backup_id) as entry:
            try:
                result = verify_backup(rt, backup_id)
            except VerificationFailed as exc:
                entry.outcome, entry.detail["check"] = audit.FAILED, exc.check
                raise
    except VerificationFailed as exc:
        data = {"id": backup_id, "status": "failed", "ok": False, "check": exc.check, "message": exc.message, "remedy": exc.remedy}
        ctx.out.result(data, lambda c, d: (c.print(f"[red]{backup_id}: verification FAILED[/] ({d['check']})"),
                                           c.print(f"  {d['message']}", markup=False), c.print(f"  what to do: {d['remedy']}", markup=False)))
        sys.exit(1)
    result = {"id": backup_id, "ok": True, **result}
    ctx.out.result(result, lambda c, d: c.print(f"[green]{backup_id}: verified[/] ({d.get('plaintext_bytes')} plaintext bytes checked "
                                                f"from tier {d['location']} in {d['duration_seconds']:.1f}s)"))


@click.command("restore")
@click.argument("backup_id", required=False)
@click.option("--to", "to", type=click.Path(), default=None,
              help="restore files/config/SQLite to this path (a SQLite backup to DIR/ or an existing directory lands inside it)")
@click.option("--strip-source-path", is_flag=True,
              help="files/config: restore relative to the backed-up paths' common directory instead of nesting the full path")
@click.option("--to-database", "to_database", default=None, help="restore a database dump into this database")
@click.option("--dry-run", is_flag=True, help="show what would be written; write nothing")
@click.option("--force", is_flag=True, help="replace existing data at the destination")
@click.option("--path", "paths", multiple=True, help="with --to: restore only this path (as backed up) and what is below it")
@click.option("--server", default=None, help="with --to-database: a target name or a DSN without password (default: the backup's target's server)")
@click.option("--server-password", default=None, help="with --to-database: password reference for --server (env:NAME or file:/path)")
@click.option("--jobs", type=int, default=1, show_default=True, help="with --to-database: parallel pg_restore jobs")
@click.option("--table", "tables", multiple=True, help="with --to-database: restore only this table (PostgreSQL; schema.table)")
@click.option("--with-globals", is_flag=True,
              help="with --to-database: apply the backup's roles and tablespaces first, then keep owners and GRANTs (PostgreSQL)")
@click.option("--globals-to", "globals_to", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="write the backup's globals (roles, tablespaces) as SQL to this file, mode 0600 (PostgreSQL)")
@click.option("--target", "pitr_target", default=None, help="with --to-time: the target (PostgreSQL physical, or MySQL with binlog) to restore to a moment")
@click.option("--to-time", "to_time", default=None, help="restore to this moment (ISO 8601 with a zone); needs --target")
@click.option("--to-datadir", "to_datadir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="with --to-time: the new data directory")
@click.option("--start", "start_server", is_flag=True, help="with --to-datadir: start the server and wait for recovery to end")
@click.option("--port", type=int, default=None, help="with --start: the port the restored server listens on (127.0.0.1)")
@common
def restore(ctx: Context, backup_id, to, strip_source_path, to_database, dry_run, force, paths, server, server_password, jobs, tables,
            with_globals, globals_to, pitr_target, to_time, to_datadir, start_server, port):
    """Restore a backup, or a target to a moment (--target T --to-time TIME); refuses to overwrite anything without --force."""
    from backup_tasks.ops.restore import extract_globals, restore_backup

    if to_time or to_datadir or pitr_target:
        if pitr_target and ctx.local_rt.target(pitr_target).kind == "mysql":  # a dump plus binary logs replayed into a database
            from backup_tasks.cli.pitr_mysql import mysql_restore_to_time

            if (backup_id or not (to_time and to_database) or to or to_datadir or globals_to or strip_source_path or paths
                    or jobs != 1 or tables or with_globals or start_server or port):
                raise InputError("a restore of a MySQL/MariaDB target to a moment takes --target T --to-time TIME --to-database NAME",
                                 "backupctl restore --target shop-db --to-time 2026-12-05T07:00:00Z --to-database shop_restored")
            mysql_restore_to_time(ctx, pitr_target, to_time, to_database, force=force, dry_run=dry_run, server=server,
                                  server_password=server_password)
            return
        from backup_tasks.cli.pitr import restore_to_time

        if backup_id or to or to_database or globals_to or strip_source_path or paths:
            raise InputError("--target/--to-time/--to-datadir restore a moment, not a backup id",
                             "backupctl restore --target T --to-time TIME --to-datadir DIR")
        restore_to_time(ctx, pitr_target, to_time, to_datadir, start=start_server, port=port, force=force, dry_run=dry_run)
        return
    if not backup_id:
        raise InputError("which backup? give its id", "backupctl list shows them; or --target T --to-time TIME")
    if sum(map(bool, (to, to_database, globals_to))) != 1:
        raise InputError("give exactly one of --to PATH, --to-database NAME or --globals-to FILE", "backupctl restore ID --to /restore/here")
    rt = ctx.local_rt  # restores in this process: no Celery to set up
    if paths and not to:
        raise InputError("--path goes with --to", "backupctl restore ID --to /restore/here --path /srv/app/config")
    if not to_database and (server or server_password or tables or jobs != 1 or with_globals):
        raise InputError("--server, --server-password, --jobs, --table and --with-globals go with --to-database",
                         "drop them, or restore --to-database NAME")
    if strip_source_path and not to:
        raise InputError("--strip-source-path goes with --to PATH", "drop it, or restore --to PATH")
    row = rt.catalog.get(backup_id)
    detail = {"to": str(to or globals_to or "") or None, "to_database": to_database, "server": audit.redact(server), "dry_run": dry_run,
              "force": force, "strip_source_path": strip_source_path, "tables": list(tables) or None, "globals": bool(with_globals or globals_to)}
    with ctx.audited("restore", target=row.target, backup_id=backup_id, detail={k: v for k, v in detail.items() if v}) as entry:
        if dry_run:
            entry.outcome = "dry-run"
        if to_database:
            _restore_database(ctx, backup_id, to_database, dry_run=dry_run, force=force, server=server,
                              server_password=server_password, jobs=jobs, tables=tables, with_globals=with_globals)
            return
        if globals_to:
            result = extract_globals(rt, backup_id, globals_to, force=force, dry_run=dry_run)
            ctx.out.result(result, _print_globals)
            return
        with StageBar(ctx.out, f"restore of {backup_id}", wanted=not dry_run) as bar:
            result = restore_backup(rt, backup_id, to, force=force, dry_run=dry_run, progress=bar.callback if bar.enabled else None,
                                    strip_source_path=strip_source_path, paths=tuple(paths))

    def human(c, d):
        if d["dry_run"]:
            c.print(f"dry run: {backup_id} would be restored to {d['destination']} (nothing written)")
            origin = {f["path"]: f["from"] for f in d.get("files_from", [])[:50]}  # a chain: where each file's bytes are
            for path in d.get("would_write", [])[:50]:
                rel = os.path.relpath(path, d["destination"])
                c.print(f"  {path}" + (f"  (from {origin[rel]})" if rel in origin else ""), markup=False)
            if len(d.get("would_write", [])) > 50:
                c.print(f"  ... and {len(d['would_write']) - 50} more")
            for source in d.get("from_backups", []):
                c.print(f"  {source['files']} files ({human_size(source['bytes'])}) from backup {source['backup_id']}", markup=False)
            if d.get("needs_force"):
                c.print("[yellow]the destination is not empty: a real restore needs --force[/]")
        else:
            c.print(f"[green]restored[/] {backup_id} to {d['restored_to']}")
        for note in d.get("notes", []):
            c.print(f"  note: {note}", markup=False)

    ctx.out.result(result, human)


def _print_globals(c, d: dict) -> None:
    roles, spaces = ", ".join(d.get("roles") or []) or "-", ", ".join(d.get("tablespaces") or []) or "-"
    if d["dry_run"]:
        c.print(f"dry run: the globals of {d['backup_id']} would be written to {d['destination']} (nothing written)", markup=False)
        if d.get("needs_force"):
            c.print("[yellow]the file exists: a real restore needs --force[/]")
    else:
        c.print(f"[green]wrote[/] the globals of {d['backup_id']} to {d['restored_to']} (mode 0600: it holds role password hashes)")
    c.print(f"  roles: {roles}\n  tablespaces: {spaces}", markup=False)


def _restore_database(ctx: Context, backup_id, database, **kw) -> None:
    from backup_tasks.ops.restore import restore_to_database

    with StageBar(ctx.out, f"restore of {backup_id} into {database}", wanted=not kw.get("dry_run")) as bar:
        result = restore_to_database(ctx.local_rt, backup_id, database, progress=bar.callback if bar.enabled else None, **kw)

    def human(c, d):
        if d["dry_run"]:
            c.print(f"dry run: {backup_id} would be restored into database {d['database']} on {d['server']} (nothing written)")
            objects = d.get("objects")
            if isinstance(objects, list):  # PostgreSQL: the archive's table of contents
                for line in objects[:50]:
                    c.print(f"  {line}", markup=False)
                if len(objects) > 50:
                    c.print(f"  ... and {len(objects) - 50} more")
            elif isinstance(objects, dict):  # MySQL: a statement summary
                for kind, names in objects.items():
                    c.print(f"  {kind}: {', '.join(names) or '-'}", markup=False)
            if d.get("needs_force"):
                c.print(f"[yellow]database {d['database']} has {d['existing_tables']} table(s): a real restore needs --force[/]")
        else:
            c.print(f"[green]restored[/] {backup_id} into database {d['database']} on {d['server']} "
                    f"({len(d.get('tables', {}))} tables{', replaced the existing database' if d.get('replaced_existing') else ''})")
        g = d.get("globals")
        if g:
            c.print(f"  globals: roles created {', '.join(g['roles_created']) or '-'}; existing (altered) "
                    f"{', '.join(g['roles_existing']) or '-'}; tablespaces created {', '.join(g['tablespaces_created']) or '-'}",
                    markup=False)
        for note in d.get("notes", []):
            c.print(f"  note: {note}", markup=False)

    ctx.out.result(result, human)


COMMANDS = (backup, list_, show, verify, restore)

__all__ = ["COMMANDS", "BackupError"]
