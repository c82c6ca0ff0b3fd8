"""backupctl pitr TARGET: the restorable window of a point-in-time target."""

from __future__ import annotations

import sys

import click

from backup_tasks.cli.context import Context, common


@click.command("pitr")
@click.argument("target")
@click.option("--ship", is_flag=True, help="binlog targets: rotate and ship the closed binary logs now, then show the window")
@common
def pitr(ctx: Context, target, ship):
    """Earliest and latest restorable time, and any gap; exit 1 when a gap breaks the window or nothing is restorable."""
    from backup_tasks.cli.pitr_mysql import mysql_window
    from backup_tasks.errors import InputError
    from backup_tasks.ops.postgres_pitr import window as pitr_ops

    if ctx.rt.target(target).kind == "mysql":  # binary logs; PostgreSQL's WAL window is below
        mysql_window(ctx, target, ship=ship)
        return
    if ship:
        raise InputError("--ship rotates and ships MySQL/MariaDB binary logs", f"for PostgreSQL WAL: backupctl wal ship --target {target}")
    result = pitr_ops.window(ctx.rt, target)

    def human(c, d):
        if not d["spans"]:
            c.print(f"[red]{target}: nothing is restorable[/] (no verified base backup with its WAL stored)")
        else:
            c.print(f"{target}: restorable from {d['earliest']} to {d['latest']}", markup=False)
        for gap in d["gaps"]:
            c.print(f"[red]gap[/]: {gap['missing_segments']} segment(s) missing after {gap['after']} "
                    f"({gap['from']} to {gap['to']})")
        if d["unrestorable_bases"]:
            c.print(f"  bases without their WAL: {', '.join(d['unrestorable_bases'])}", markup=False)
        c.print(f"  newest WAL stored {d['newest_wal_at'] or 'never'}", markup=False)

    ctx.out.result(result, human)
    if not result["ok"]:
        sys.exit(1)


COMMANDS = (pitr,)


def restore_to_time(ctx: Context, target, to_time, to_datadir, *, start: bool, port, force: bool, dry_run: bool) -> None:
    """``restore --target T --to-time TIME --to-datadir DIR``; exit 2 for a time outside the window or in a gap."""
    from backup_tasks.errors import InputError
    from backup_tasks.ops.postgres_pitr.restore import restore_to_time as run
    from backup_tasks.timefmt import parse

    if not (target and to_time and to_datadir):
        raise InputError("a restore to a moment needs --target, --to-time and --to-datadir",
                         "backupctl restore --target T --to-time 2026-12-05T07:00:00Z --to-datadir /srv/restore")
    try:
        when = parse(to_time)
    except ValueError:
        raise InputError(f"'{to_time}' is not an ISO 8601 time", "e.g. 2026-12-05T07:00:00Z") from None
    with ctx.audited("restore", target=target, detail={"to_time": to_time, "to_datadir": str(to_datadir), "dry_run": dry_run,
                                                       "force": force, "start": start}) as entry:
        if dry_run:
            entry.outcome = "dry-run"
        result = run(ctx.local_rt, target, when, to_datadir, start=start, port=port, force=force, dry_run=dry_run)

    def human(c, d):
        if d["dry_run"]:
            c.print(f"dry run: base {d['base_id']} (ended {d['base_ended_at']}) would be extracted to {d['to_datadir']} "
                    f"and replayed to {d['target_time']} (nothing written)", markup=False)
            if d.get("replaces_existing"):
                c.print("[yellow]the directory is not empty: a real restore needs --force[/]")
        elif d["started"]:
            c.print(f"[green]restored[/] {target} to {d['target_time']} in {d['to_datadir']}: reached {d['reached_time']} "
                    f"(LSN {d['reached_lsn']}), running on 127.0.0.1:{d['port']}")
        else:
            c.print(f"[green]extracted[/] base {d['base_id']} to {d['to_datadir']}, set to replay to {d['target_time']}; "
                    f"{d['next_step']}", markup=False)

    ctx.out.result(result, human)
