"""backupctl drill TARGET: run a restore drill now (and drill --history)."""

from __future__ import annotations

import sys

import click

from backup_tasks.records import audit
from backup_tasks.cli.context import Context, common
from backup_tasks.errors import InputError, ServiceUnavailable


@click.command("drill")
@click.argument("target")
@click.option("--timeout", type=float, default=None, help="with a broker: wait at most this many seconds for the drill")
@click.option("--history", is_flag=True, help="list the target's past drills instead of running one")
@common
def drill(ctx: Context, target, timeout, history):
    """Restore the latest verified backup into a temporary database, compare, run health checks, drop it.

    A physical PostgreSQL target: base + WAL replayed to a recent counted point in a temporary data directory.
    """
    from backup_tasks.ops import drills
    from backup_tasks.ops import drill as drill_mod

    rt = ctx.rt
    drill_mod.drill_spec(rt.target(target))  # bad configuration: exit 2 before anything runs
    if history:
        rows = drill_mod.history(rt, target)

        def table(c, data):
            from rich.table import Table  # rich only when printing for people: a --json command starts without it

            t = Table("drill", "backup", "result", "started", "restore s", "failed step")
            for d in data:
                t.add_row(str(d["drill_id"]), d["backup_id"] or "-", d["result"], d["started_at"],
                          f"{d['restore_seconds']:.1f}" if d["restore_seconds"] is not None else "-",
                          (d["details"] or {}).get("failed_step", "-"))
            c.print(t)

        ctx.out.result(rows, table)
        return
    if rt.settings.embedded:
        result = drills.run_drill(rt, target, actor=audit.cli_actor())
    else:
        result = _remote(rt, target, timeout)
    ctx.out.result(result, _human)
    if result["result"] != "passed":
        sys.exit(1)


def _remote(rt, target: str, timeout: float | None) -> dict:
    from celery.exceptions import TimeoutError as CeleryTimeout
    from kombu.exceptions import OperationalError

    from backup_tasks.orchestration.routing import DRILL_QUEUE
    from backup_tasks.orchestration.tasks import drill as drill_task

    try:
        with drill_task.app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=2, interval_start=0.2, interval_step=0.5)
        pending = drill_task.apply_async(args=(target,), kwargs={"actor": audit.cli_actor()}, queue=DRILL_QUEUE)
    except (OperationalError, ConnectionError) as exc:
        raise ServiceUnavailable(f"cannot reach the broker: {exc}", "is Redis up? check BACKUP_BROKER_URL") from None
    try:
        return pending.get(timeout=timeout, propagate=True)
    except CeleryTimeout:
        raise InputError(f"the drill of '{target}' did not finish within {timeout}s (task {pending.id})",
                         f"see later with: backupctl drill {target} --history") from None


def _human(c, d: dict) -> None:
    colour = "green" if d["result"] == "passed" else "red"
    c.print(f"drill of [bold]{d['target']}[/]: [{colour}]{d['result']}[/]" + (f" ({d.get('failed_step')}: {d.get('error')})" if d.get("error") else ""),
            markup=True)
    took = ' in %.1fs' % d['restore_seconds'] if d.get('restore_seconds') is not None else ''
    if "temp_database" in d:
        c.print(f"  backup {d.get('backup_id') or '-'} restored into {d['temp_database']} on {d['server']}"
                f"{took} (dropped: {d.get('temp_database_dropped')})", markup=False)
    else:  # a physical target: base + WAL replayed to a counted point in a temporary data directory
        point = d.get("point") or {}
        c.print(f"  base {d.get('backup_id') or '-'} + WAL replayed to {point.get('lsn', '-')} ({point.get('at', '-')}) "
                f"in {d.get('temp_datadir') or '-'}{took} (removed: {d.get('temp_datadir_removed')})", markup=False)
    tables = d.get("tables")
    if tables:
        c.print(f"  tables {tables['restored']}/{tables['manifest']}, rows {tables['rows_restored']}/{tables['rows_manifest']}", markup=False)
    for check in d.get("checks", []):
        c.print(f"  check {'ok ' if check['passed'] else 'FAIL'} {check['sql']} -> {check['value']}", markup=False)


COMMANDS = (drill,)
