"""backupctl delete ID: remove one backup's copies, unless retention protects it (ops/delete.py)."""

from __future__ import annotations

import click

from backup_tasks.records import audit
from backup_tasks.cli.context import Context, common


@click.command("delete")
@click.argument("backup_id")
@common
def delete(ctx: Context, backup_id):
    """Delete one backup from every tier; refuses (exit 2, nothing removed) the newest verified or
    drill-proven backup, a running one, a parent of a remaining incremental, or an Object-Locked copy."""
    from backup_tasks.ops.delete import delete_backup

    result = delete_backup(ctx.rt, backup_id, actor=audit.cli_actor())
    ctx.out.result(result, lambda c, d: c.print(
        f"deleted {d['backup_id']} ({', '.join(r['tier'] for r in d['removed']) or 'no copies left to remove'})"
        + (f"; removed {len(d['debris'])} temp file(s) of writes that never finished" if d["debris"] else "")))


COMMANDS = (delete,)
