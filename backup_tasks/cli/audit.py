"""backupctl audit [--since]: who did what, when, and how it ended."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

import click

from backup_tasks.records import audit as audit_log
from backup_tasks.cli.context import Context, common
from backup_tasks.errors import InputError

_RELATIVE = re.compile(r"^(\d+)\s*([mhdw])$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """``7d``, ``24h``, ``30m``, ``2w`` before now, or an ISO time (UTC unless it says otherwise)."""
    now = now or datetime.now(timezone.utc)
    match = _RELATIVE.match(text.strip())
    if match:
        return now - timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise InputError(f"--since {text!r} is neither a duration nor an ISO time",
                         "write e.g. --since 24h, --since 7d or --since 2026-11-01T00:00:00Z") from None
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


@click.command("audit")
@click.option("--since", default=None, help="only entries since this time: 24h, 7d, 2w or an ISO time")
@click.option("--action", default=None, help="only this action (backup, restore, verify, delete, cleanup, drill, keys.generate, ...)")
@click.option("--target", default=None, help="only this target")
@click.option("--limit", type=click.IntRange(min=1), default=200, show_default=True)
@common
def audit(ctx: Context, since, action, target, limit):
    """The audit log, newest first: time, actor (cli:user, app:name, api:token, beat), action and outcome."""
    after = parse_since(since) if since else None
    rows = [audit_log.dumps(r) for r in ctx.rt.catalog.audit(since=after, action=action, target=target, limit=limit)]

    def human(c, data):
        from rich.markup import escape  # rich only when printing for people: a --json command starts without it

        # One line per entry rather than a table: an audit line is never cut to fit a column.
        for r in data:
            colour = {"ok": "green", "verified": "green", "passed": "green", "failed": "red", "refused": "yellow",
                      "deferred": "yellow"}.get(r["outcome"], "white")
            detail = ", ".join(f"{k}={v}" for k, v in (r["detail"] or {}).items() if v not in (None, "", [], {}))
            c.print(f"{r['at'][:19]}  {escape(r['actor'])}  {r['action']} [{colour}]{r['outcome']}[/]"
                    f"  {r['target'] or '-'} {r['backup_id'] or ''}  {escape(detail)}")
        if not data:
            c.print("no audit entries match")

    ctx.out.result(rows, human)


COMMANDS = (audit,)
