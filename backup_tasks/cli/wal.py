"""backupctl wal push | get | ship: PostgreSQL's archive_command and restore_command, and shipping the spool by hand."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from backup_tasks.cli.context import Context, common
from backup_tasks.errors import BackupError

#: restore_command's "this failed, stop recovery" status: PostgreSQL treats an exit status
#: above 125 as fatal, and anything lower as "no such file", which would end recovery early
FATAL_FOR_POSTGRES = 126


@click.group("wal")
def wal():
    """PostgreSQL WAL archiving for physical targets."""


@wal.command("push")
@click.option("--target", required=True, help="the physical target this server's WAL belongs to")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@common
def push(ctx: Context, target, path):
    """archive_command: exit 0 only once PATH is durable in this host's spool (never waits on the network)."""
    from backup_tasks.ops.postgres_pitr import wal as wal_ops

    result = wal_ops.push(ctx.rt, target, path)
    ctx.out.result(result, lambda c, d: c.print(f"{d['name']}: {d['outcome']}", markup=False))


@wal.command("get")
@click.option("--target", required=True)
@click.argument("name")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@common
def get(ctx: Context, target, name, path):
    """restore_command: write WAL file NAME to PATH; exit 1 when the archive lacks it, 126 on any other failure."""
    code = run_get(ctx, target, name, path)
    if code:
        sys.exit(code)


def run_get(ctx: Context, target: str, name: str, path: Path) -> int:
    """The command's work and exit status, also called without click by cli/fast_wal.py (PostgreSQL waits on each call)."""
    from backup_tasks.ops.postgres_pitr import wal as wal_ops
    from backup_tasks.ops.postgres_pitr import wal_prefetch

    try:
        result = wal_ops.get(ctx.local_rt, target, name, path)
    except wal_ops.SegmentMissing as exc:
        # recovery asks past the end of the archive (and for history files that never were) as a matter of
        # course: PostgreSQL only needs the status, and a line per probe would bury real errors in its log
        if ctx.json_mode:
            ctx.out.error(exc)
        return 1
    except BackupError as exc:
        ctx.out.error(exc)
        return FATAL_FOR_POSTGRES
    except Exception as exc:  # noqa: BLE001 - a bug must stop recovery too, never read as "no such file"
        logging.getLogger(__name__).exception("wal get %s failed", name)
        ctx.out.error(BackupError(f"internal error: {type(exc).__name__}: {exc}", "this is a bug; please report it"))
        return FATAL_FOR_POSTGRES
    try:
        result["read_ahead_started"] = wal_prefetch.start(ctx.local_rt, target, name, path)
    except Exception:  # noqa: BLE001 - the segment is in place; without a read-ahead the next ones are only slower
        logging.getLogger(__name__).warning("no WAL read-ahead after %s", name, exc_info=True)
        result["read_ahead_started"] = False
    ctx.out.result(result, lambda c, d: c.print(f"{d['name']}: from tier {d['tier']}", markup=False))
    return 0


@wal.command("prefetch", hidden=True)
@click.option("--target", required=True)
@click.option("--after", required=True, help="the segment wal get fetched itself; the read-ahead starts after it")
@click.option("--into", required=True, type=click.Path(file_okay=False, path_type=Path), help="the read-ahead directory")
@click.option("--lock-fd", type=int, default=None, help="the directory's lock, already taken by the wal get that started this")
@common
def prefetch(ctx: Context, target, after, into, lock_fd):
    """A restore's WAL read-ahead (started by wal get, detached): keeps the next segments ready in INTO."""
    from backup_tasks.ops.postgres_pitr import wal_prefetch

    result = wal_prefetch.run(ctx.local_rt, target, after, into, lock_fd)
    ctx.out.result(result, lambda c, d: c.print(f"fetched {d['fetched']} segment(s); stopped: {d['stopped']}", markup=False))


@wal.command("ship")
@click.option("--target", required=True)
@common
def ship(ctx: Context, target):
    """Ship the target's spool now (what the every-minute task does): compress, encrypt, upload, record."""
    from backup_tasks.ops.postgres_pitr import wal as wal_ops

    result = wal_ops.ship(ctx.rt, target)
    ctx.out.result(result, lambda c, d: c.print(f"shipped {len(d.get('shipped', []))} file(s); "
                                                f"{d.get('spool_bytes', 0):,} bytes still spooled", markup=False))
    if result.get("conflicts"):
        sys.exit(1)


COMMANDS = (wal,)
