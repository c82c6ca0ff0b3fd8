"""backupctl cleanup: apply retention (or show the plan), with a reason for every keep and removal."""

from __future__ import annotations

import sys
from datetime import timezone

import click

from backup_tasks import timefmt
from backup_tasks.records import audit
from backup_tasks.cli.context import Context, common
from backup_tasks.errors import InputError


@click.command("cleanup")
@click.option("--target", default=None, help="only this target (default: all)")
@click.option("--dry-run", is_flag=True, help="print the plan; delete nothing")
@click.option("--now", "now", default=None, metavar="ISO-TIME",
              help="plan as if it were this UTC time, e.g. to see what next week's cleanup removes (with --dry-run)")
@common
def cleanup(ctx: Context, target, dry_run, now):
    """Apply each target's retention policy and the tiers' max ages; remove debris.

    Never removes the newest verified or drill-proven backup, a parent of a kept
    incremental, or an object under Object Lock. Exit 1 if something planned could not
    be removed, 3 if a tier was unreachable.
    """
    from backup_tasks.ops.cleanup import exit_code, run_cleanup

    when = None
    if now:
        try:
            when = timefmt.parse(now)
        except ValueError:
            raise InputError(f"--now {now!r} is not an ISO time", "write e.g. --now 2024-07-01T02:00:00Z") from None
        when = when if when.tzinfo else when.replace(tzinfo=timezone.utc)
    report = run_cleanup(ctx.rt, target, dry_run=dry_run, now=when, actor=audit.cli_actor())
    ctx.out.result(report, _human)
    code = exit_code(report)
    if code:
        sys.exit(code)


def _human(c, d: dict) -> None:
    from rich.markup import escape  # rich only when printing for people: a --json command starts without it

    verb = "would remove" if d["dry_run"] else "removed"
    c.print(f"retention at {d['now']}{' (dry run: nothing deleted)' if d['dry_run'] else ''}")
    for target, policy in d["policies"].items():
        c.print(f"  {target}: {policy}", markup=False)
    # One line per decision rather than a table: a reason is never cut to fit a column.
    for dec in d["decisions"]:
        colour = "green" if dec["action"] == "keep" else "red"
        c.print(f"  [{colour}]{dec['action']:<6}[/] {dec['backup_id']} on {dec['tier']} ({dec['created_at']}): "
                f"{escape('; '.join(dec['reasons']))}")
    c.print(f"{d['keep']} copies kept, {d['remove']} {verb}; backups gone entirely: "
            f"{', '.join(d['deleted_backups'] or d['would_delete_backups']) or 'none'}")
    for item in d["debris"]:
        c.print(f"  debris {verb}: {item.get('key') or item.get('path')} ({item['reason']})", markup=False)
    wal = d.get("wal_removed") or d.get("would_remove_wal") or []
    if wal:
        c.print(f"  WAL {verb}: {len(wal)} file(s) of {', '.join(sorted({w['target'] for w in wal}))}, "
                f"{wal[0]['name']} to {wal[-1]['name']}: {wal[-1]['reason']}", markup=False)
    for item in d.get("binlogs_removed", []):
        c.print(f"  binary log {verb}: {item['target']} {item['binlog']} ({item['reason']})", markup=False)
    for item in d["refused"]:
        c.print(f"  [yellow]refused[/] {item['backup_id']} on {item['tier']}: {item['reason']}")
    for item in d["errors"]:
        c.print(f"  [red]error[/] {item.get('backup_id', '')} on {item.get('tier')}: {item['message']} ({item['remedy']})")


COMMANDS = (cleanup,)
