"""backupctl report [--html FILE] | backupctl watchdog: are we recoverable right now?"""

from __future__ import annotations

import click

from backup_tasks.cli.context import Context, common
from backup_tasks.errors import InputError
from backup_tasks.units import human_size


@click.command("report")
@click.option("--html", "html_file", type=click.Path(dir_okay=False, writable=True), default=None,
              help="also write the report with plots as one self-contained HTML file")
@click.option("--days", type=click.IntRange(1, 3660), default=None, help="window for success rates and plots (default: report_days, 30)")
@click.option("--mail", is_flag=True, help="send it now, as the weekly backup.report task does (report_recipients or alerts)")
@common
def report(ctx: Context, html_file, days, mail):
    """DR readiness per target: last backup, verify, drill with RTO, RPO, success rate, storage per tier."""
    from backup_tasks.ops import report as report_mod

    rt = ctx.rt
    if mail:
        ctx.out.result(report_mod.mail(rt), lambda c, d: c.print(
            f"report {'sent' if d['sent'] else 'NOT sent'}: " + (", ".join(
                f"{ch['channel']} {'ok' if ch['ok'] else 'failed'}" for ch in d.get("channels", [])) or d.get("reason", ""))))
        return
    data = report_mod.build(rt, days=days)
    if html_file:
        try:
            report_mod.write_html(rt, data, html_file)
        except OSError as exc:
            raise InputError(f"cannot write the report to {html_file}: {exc.strerror}", "choose a writable path for --html") from None
        data["html"] = str(html_file)
        ctx.out.note(f"HTML report written to {html_file}")
    ctx.out.result(data, _human)


def _human(c, d: dict) -> None:
    from rich.table import Table  # rich only when printing for people: a --json command starts without it

    s = d["summary"]
    verdict = "[green]all targets ready[/]" if not s["at_risk"] else f"[red]{s['ready']} of {s['targets']} targets ready[/]"
    c.print(f"DR readiness at {d['generated_at']} ({d['window_days']}-day window): {verdict}", markup=True)
    t = Table("target", "last backup", "last verified", "last drill (RTO)", "RPO", f"success {d['window_days']}d", "storage", "ready")
    for x in d["targets"]:
        b, v, dr, rpo, sr = x["last_backup"], x["last_verify"], x["last_drill"], x["rpo"], x["success_rate"]
        t.add_row(
            f"{x['target']}\n[dim]{x['kind']} on {x['host']}[/]",
            f"{b['created_at']}\n[dim]{b['status']}, {human_size(b['size_stored'])}[/]" if b else "never",
            v["verified_at"] if v else "[red]never[/]",
            (f"{'[green]' if dr['result'] == 'passed' else '[red]'}{dr['result']}[/] {dr['finished_at']}\n"
             f"[dim]RTO {dr['rto_seconds']:.1f}s[/]" if dr["rto_seconds"] is not None else f"{dr['result']} {dr['finished_at']}") if dr else "-",
            (f"[green]ok[/] ({rpo['hours']:g} h)" if rpo["compliant"] else f"[red]breached[/] ({rpo['hours']:g} h)")
            + (f"\n[dim]data {rpo['data_age_hours']:.1f} h old[/]" if rpo["data_age_hours"] is not None else ""),
            f"{sr['ratio'] * 100:.0f}% ({sr['successes']}/{sr['attempts']})" if sr["ratio"] is not None else "-",
            "\n".join(f"{tier}: {human_size(n)}" for tier, n in x["storage"].items()) or "-",
            "[green]yes[/]" if x["ready"] else "[red]no[/]\n[dim]" + "; ".join(x["problems"]) + "[/]",
        )
    c.print(t)
    for cond in d["open_conditions"]:
        c.print(f"[yellow]open:[/] {cond['kind']} {cond['target'] or cond['tier']} since {cond['since']}", markup=True)
    keys = d["encryption_keys"]
    for k in keys["keys"]:
        age = "age unknown" if k["age_days"] is None else f"{k['age_days']:.0f} days old"
        due = " [red]due for rotation[/]" if k["due"] else ""
        c.print(f"key {k['key_id']} ({k['role']}): {age}, {k['objects']} objects{due}", markup=True)
    if keys["objects_on_old_keys"]:
        logs = keys.get("logs_on_old_keys") or 0
        c.print(f"[yellow]{keys['objects_on_old_keys']} objects ({keys['backups_on_old_keys']} backups, {logs} WAL files and "
                "binlogs) still on old keys:[/] backupctl reencrypt --wait moves the backups; the logs stay until retention "
                "drops them", markup=True)


@click.command("watchdog")
@common
def watchdog(ctx: Context):
    """Check RPOs, free space and mounts now and alert on what changed (beat runs this as backup.watchdog)."""
    from backup_tasks.ops.watchdog import run_watchdog
    from backup_tasks.orchestration import queued_messages, run_lock

    result = run_watchdog(ctx.rt, release_lock=run_lock.releaser(ctx.rt.settings), has_message=queued_messages.finder(ctx.rt))

    def human(c, d):
        c.print(f"watchdog at {d['checked_at']} on {d['host']}: {len(d['opened'])} new, {len(d['resolved'])} resolved, "
                f"{len(d['open'])} open")
        for key in d["opened"]:
            c.print(f"  [red]new[/] {key}", markup=True)
        for key in d["resolved"]:
            c.print(f"  [green]resolved[/] {key}", markup=True)
        for key in sorted(set(d["open"]) - set(d["opened"])):
            c.print(f"  [yellow]still open[/] {key}", markup=True)
        for run in d["abandoned"]:
            c.print(f"  [red]abandoned[/] {run['backup_id']}: {run['reason']}", markup=True)

    ctx.out.result(result, human)


COMMANDS = (report, watchdog)
