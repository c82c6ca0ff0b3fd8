"""backupctl reencrypt: move stored backups onto the current recipients after a key rotation."""

from __future__ import annotations

import sys

import click

from backup_tasks.cli.context import Context, common


@click.command("reencrypt")
@click.option("--from-key", "from_key", default=None, help="only backups encrypted to this key id (backupctl keys status)")
@click.option("--target", default=None, help="only this target's backups")
@click.option("--dry-run", is_flag=True, help="list what would be re-encrypted; change nothing")
@click.option("--wait", is_flag=True, help="wait for every task (always so on the embedded default)")
@click.option("--timeout", type=float, default=None, help="give up waiting after this many seconds")
@common
def reencrypt(ctx: Context, from_key, target, dry_run, wait, timeout):
    """One low-priority backup.reencrypt task per backup on the verify queue; old objects go only once the new ones verify."""
    from backup_tasks import defaults
    from backup_tasks.ops.keys import reencrypt as ops
    from backup_tasks.orchestration import routing, tasks
    from backup_tasks.records import audit

    rt = ctx.rt
    if target:
        rt.target(target)
    actor = audit.cli_actor()
    with ctx.audited("reencrypt", target=target, detail={"from_key": from_key, "dry_run": dry_run}) as entry:
        rows = ops.select(rt, from_key=from_key, target=target)
        if dry_run:
            outcomes = [ops.plan(row, rt) for row in rows]
        elif rt.settings.embedded:  # the very same task, run here, one backup after another
            outcomes = [tasks.reencrypt.apply(args=(row.id, from_key, actor)).get() for row in rows]
        else:
            sent = [(row, tasks.reencrypt.apply_async(args=(row.id, from_key, actor), queue=routing.VERIFY_QUEUE,
                                                     priority=defaults.REENCRYPT_PRIORITY)) for row in rows]
            if wait:
                outcomes = [result.get(timeout=timeout, propagate=True) for _, result in sent]
            else:
                outcomes = [{"backup_id": row.id, "target": row.target, "outcome": "enqueued", "task_id": result.id}
                            for row, result in sent]
        counts: dict[str, int] = {}
        for outcome in outcomes:
            counts[outcome["outcome"]] = counts.get(outcome["outcome"], 0) + 1
        entry.detail.update(counts=counts)
        if counts.get(ops.FAILED):
            entry.outcome = audit.FAILED
    data = {"dry_run": dry_run, "from_key": from_key, "target": target, "to_key_ids": ops.current_key_ids(rt),
            "counts": counts, "backups": outcomes}

    def human(c, d):
        from rich.table import Table  # rich only when printing for people: a --json command starts without it

        if not d["backups"]:
            c.print("nothing to re-encrypt: every stored backup is on the current key")
            return
        table = Table("backup", "target", "outcome", "from", "to", "reason")
        for o in d["backups"]:
            table.add_row(o["backup_id"], o["target"], o["outcome"], ",".join(o.get("from_key_ids", [])),
                          ",".join(o.get("to_key_ids", [])), o.get("reason", ""))
        c.print(table)

    ctx.out.result(data, human)
    if counts.get(ops.FAILED):
        sys.exit(1)


COMMANDS = (reencrypt,)
