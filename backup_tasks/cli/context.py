"""What every command shares: --config/--json and the lazily loaded runtime."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property, wraps

import click

from backup_tasks.cli import startup_gc
from backup_tasks.cli.output import Output


@dataclass
class Context:
    config_path: str | None
    json_mode: bool

    @cached_property
    def out(self) -> Output:
        return Output(self.json_mode)

    @cached_property
    def rt(self):
        """The runtime with Celery set up, for commands that enqueue or run a chain (importing Celery costs start-up time)."""
        from backup_tasks.orchestration.celery_app import configure

        rt = self.local_rt
        configure(rt.settings)
        return rt

    @cached_property
    def local_rt(self):
        """The runtime without Celery set up, for commands that never enqueue: they read the catalog, verify or restore in
        this process (PostgreSQL waits on ``wal get``, a restore's ratio to pg_restore includes our start-up)."""
        from backup_tasks import config
        from backup_tasks.ops import runtime

        rt = runtime.install(runtime.Runtime(config.load(self.config_path)))
        startup_gc.settle()  # the command's imports are done
        return rt

    def audited(self, action: str, *, target: str | None = None, backup_id: str | None = None, detail: dict | None = None):
        """Audit what this command does, as ``cli:<user>`` (see audit.py)."""
        from backup_tasks.records import audit

        return audit.audited(self.local_rt.catalog, action, actor=audit.cli_actor(), target=target, backup_id=backup_id, detail=detail)

    def record_if_configured(self, action: str, detail: dict) -> None:
        """Audit a credential operation where a catalog exists: a first ``keys generate`` or
        ``api token`` often precedes any config (or a reachable catalog), and the keys or the
        token it made must still be handed over."""
        import logging

        from backup_tasks.records import audit
        from backup_tasks.errors import BackupError, ConfigError

        try:
            catalog = self.local_rt.catalog
        except BackupError as exc:  # no config yet is the usual case; an unreachable catalog is worth a warning
            level = logging.INFO if isinstance(exc, ConfigError) else logging.WARNING
            logging.getLogger("backup_tasks.records.audit").log(level, "%s %s not audited in a catalog: %s", action, detail, exc.message)
            return
        audit.record(catalog, action, actor=audit.cli_actor(), outcome=audit.OK, detail=detail)


def configure_logging(verbose: int = 0) -> None:
    """Log to stderr, every handler behind the secret mask (embedded, the stages run and log in this process)."""
    import logging
    import sys

    from backup_tasks import redaction

    logging.basicConfig(level=[logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)], stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, redaction.LogFilter) for f in handler.filters):
            handler.addFilter(redaction.LogFilter())


def common(fn):
    """--config and --json on every command (they may also come before the command name)."""

    @click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
                  help="targets file (default: $BACKUP_CONFIG, then ./backup-tasks.toml)")
    @click.option("--json", "json_mode", is_flag=True, default=False, help="print one JSON document on stdout")
    @click.pass_context
    @wraps(fn)
    def wrapper(click_ctx: click.Context, config_path, json_mode, **kwargs):
        parent: Context = click_ctx.find_object(Context) or Context(None, False)
        ctx = Context(config_path or parent.config_path, json_mode or parent.json_mode)
        return fn(ctx, **kwargs)

    return wrapper
