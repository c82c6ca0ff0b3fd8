"""Entry point: global options, error handling and exit codes (0 ok, 1 failed, 2 bad input, 3 service down)."""

from __future__ import annotations

import importlib
import sys
import traceback
import click

from backup_tasks import redaction
from backup_tasks.cli.context import Context, configure_logging
from backup_tasks.cli.output import Output
from backup_tasks.errors import BackupError, InputError, ServiceUnavailable


#: the module (under backup_tasks.cli) whose COMMANDS hold each command: a command imports its own module only
#: (the others cost a few ms of every command's start-up); help and an unknown name import them all
_COMMAND_MODULES = {
    "backup": "backups", "list": "backups", "show": "backups", "verify": "backups", "restore": "backups",
    "targets": "admin", "keys": "admin", "catalog": "admin", "api": "api", "audit": "audit", "cleanup": "cleanup",
    "delete": "delete", "drill": "drill", "metrics": "metrics", "pitr": "pitr", "report": "report", "watchdog": "report",
    "reencrypt": "reencrypt", "wal": "wal",
}


class _Commands(click.Group):
    """The top-level group: each command is added when it is first asked for, from its module's COMMANDS."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_COMMAND_MODULES)

    def get_command(self, ctx: click.Context, cmd_name: str):
        if cmd_name not in self.commands:
            # An unknown name loads every command, so that click's "did you mean" sees them all.
            for module in [_COMMAND_MODULES[cmd_name]] if cmd_name in _COMMAND_MODULES else set(_COMMAND_MODULES.values()):
                _add(module)
        return self.commands.get(cmd_name)


def _add(module: str) -> None:
    if module == "admin":  # cli/keys.py adds rotate and status to admin's keys group: never one without the other
        importlib.import_module("backup_tasks.cli.keys")
    for command in importlib.import_module(f"backup_tasks.cli.{module}").COMMANDS:
        cli.add_command(command)


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None, help="targets file")
@click.option("--json", "json_mode", is_flag=True, default=False, help="print one JSON document on stdout")
@click.option("-v", "--verbose", count=True, help="log more (-vv for debug)")
@click.version_option(package_name="backup-tasks")
@click.pass_context
def cli(click_ctx: click.Context, config_path, json_mode, verbose):
    """Backups that end in a proven restore."""
    configure_logging(verbose)
    click_ctx.obj = Context(config_path, json_mode)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from backup_tasks.cli import fast_wal  # a script installed before cli/entry.py existed still calls this main

    served = fast_wal.serve(argv)
    if served is not None:
        return served
    out = Output("--json" in argv)
    try:
        cli.main(args=argv, prog_name="backupctl", standalone_mode=False)
        return 0
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        # Usage errors: exit 2, and still one JSON document in --json mode.
        return _report(out, InputError(exc.format_message(), "see backupctl --help"), 2)
    except click.exceptions.Abort:
        return 130
    except SystemExit as exc:  # a command decided its own exit code (e.g. 1 for a failed backup)
        return int(exc.code or 0)
    except BackupError as exc:
        return _report(out, exc, exc.exit_code)
    except Exception as exc:  # noqa: BLE001
        mapped = _service_error(exc)
        if mapped is not None:
            return _report(out, mapped, mapped.exit_code)
        sys.stderr.write(redaction.redact(traceback.format_exc()))  # a foreign exception's text is not masked yet
        return _report(out, BackupError(f"internal error: {type(exc).__name__}: {exc}",
                                        "this is a bug; please report it with the traceback above"), 1)


def _report(out: Output, err: BackupError, code: int) -> int:
    """Print the error and return its exit code, which still tells what happened if the reader of stdout has gone."""
    try:
        out.error(err)
    except BrokenPipeError:
        pass
    return code


def _service_error(exc: Exception) -> ServiceUnavailable | None:
    """Library errors that mean 'a service is down' become exit code 3."""
    from kombu.exceptions import OperationalError as KombuOperationalError
    from redis.exceptions import ConnectionError as RedisConnectionError
    from sqlalchemy.exc import OperationalError as SQLOperationalError

    if isinstance(exc, (KombuOperationalError, RedisConnectionError, ConnectionError)):
        return ServiceUnavailable(f"cannot reach the broker: {exc}", "is Redis up? check BACKUP_BROKER_URL")
    if isinstance(exc, SQLOperationalError):
        return ServiceUnavailable(f"the catalog database is unreachable: {exc.orig}", "check catalog_url and the database server")
    return None


if __name__ == "__main__":
    sys.exit(main())
