"""``backupctl pitr TARGET`` and ``restore --target T --to-time TIME --to-database NAME`` for binlog targets.

``mysql_window`` and ``mysql_restore_to_time`` do the work for MySQL/MariaDB targets
with ``binlog = true``; the ``pitr`` command (cli/pitr.py) and ``restore`` hand such
targets to them.
"""

from __future__ import annotations

import sys

from backup_tasks.cli.context import Context


def mysql_window(ctx: Context, target: str, *, ship: bool = False) -> None:
    """Print the restorable window; exit 1 when a gap breaks it or nothing is restorable yet."""
    from backup_tasks.ops.mysql_pitr import window as binlog_window
    from backup_tasks.ops.mysql_pitr.ship import ship as ship_now

    rt = ctx.rt
    shipped = ship_now(rt, target) if ship else None
    data = binlog_window.window(rt, target)
    if shipped is not None:
        data["shipped_now"] = shipped.get("shipped", [])
    data["ok"] = data["earliest"] is not None and not data["broken"]

    def human(c, d):
        if d["earliest"] is None:
            c.print(f"[red]{d['target']}: nothing is restorable to a point in time yet[/] "
                    "(it needs a verified dump taken with binlog = true)")
        else:
            c.print(f"{d['target']}: restorable from [bold]{d['earliest']}[/] to [bold]{d['latest']}[/]")
            if len(d["intervals"]) > 1:
                for i in d["intervals"]:
                    c.print(f"  {i['from']} .. {i['to']}", markup=False)
        lag = "-" if d["lag_seconds"] is None else f"{d['lag_seconds']:.0f} s"
        c.print(f"  {d['binlogs']} binary log(s) shipped, newest {d['newest_binlog'] or '-'}; lag {lag} "
                f"(alert above {d['pitr_rpo_minutes']:g} min)", markup=False)
        for g in d["gaps"]:
            c.print(f"  [red]gap[/]: {', '.join(g['missing'])} never shipped ({g['from']} .. {g['to']})")

    ctx.out.result(data, human)
    if not data["ok"]:
        sys.exit(1)


def mysql_restore_to_time(ctx: Context, target: str, to_time: str, database: str, *, force: bool, dry_run: bool,
                          server: str | None, server_password: str | None) -> None:
    from backup_tasks.ops.mysql_pitr.restore import restore_to_time
    from backup_tasks.records import audit

    detail = {"to_time": to_time, "to_database": database, "server": audit.redact(server), "dry_run": dry_run, "force": force}
    with ctx.audited("restore.to_time", target=target, detail={k: v for k, v in detail.items() if v}) as entry:
        if dry_run:
            entry.outcome = "dry-run"
        result = restore_to_time(ctx.local_rt, target, to_time, database, force=force, dry_run=dry_run, server=server,
                                 server_password=server_password)
        if not dry_run:
            entry.detail["base"] = result["base"]["backup_id"]

    def human(c, d):
        base = d["base"]
        if d["dry_run"]:
            c.print(f"dry run: {d['target']} would be restored to {d['target_time']} into database {d['database']} on {d['server']}")
        else:
            c.print(f"[green]restored[/] {d['target']} to {d['target_time']} into database {d['database']} on {d['server']}")
        c.print(f"  dump {base['backup_id']} (snapshot {base['snapshot_at']}, {base['file']}:{base['position']}), then "
                f"{len(d['binlogs'])} binary log(s) up to {d['stop_datetime']}", markup=False)
        last = d.get("last_event")
        if not d["dry_run"]:
            c.print(f"  last transaction applied: {last['gtid'] or '-'} at {last['at']} ({last['file']}:{last['end_log_pos']})"
                    if last else "  no transaction after the dump's snapshot was applied", markup=False)
        if d.get("needs_force"):
            c.print(f"[yellow]database {d['database']} has {d['existing_tables']} table(s): a real restore needs --force[/]")

    ctx.out.result(result, human)
