"""backupctl metrics serve | show: the Prometheus exporter (see metrics.py for the metric names)."""

from __future__ import annotations

import sys
import threading

import click

from backup_tasks.cli.context import Context, common
from backup_tasks.errors import InputError


@click.group("metrics")
def metrics_group():
    """Prometheus metrics per target, read from the catalog at scrape time."""


@metrics_group.command("serve")
@click.option("--port", type=click.IntRange(1, 65535), required=True, help="TCP port for /metrics (e.g. 9814)")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="address to listen on; 0.0.0.0 exposes target names and sizes to the network")
@common
def serve(ctx: Context, port, host):
    """Run the exporter until interrupted: http://HOST:PORT/metrics."""
    from backup_tasks import metrics

    rt = ctx.rt
    rt.catalog  # noqa: B018 - an unreachable catalog fails now (exit 3), not on the first scrape
    try:
        server, thread = metrics.serve(rt, host, port)
    except OSError as exc:
        raise InputError(f"cannot listen on {host}:{port}: {exc.strerror}", "choose a free port with --port, or another --host") from None
    ctx.out.note(f"serving metrics on http://{host}:{port}/metrics (Ctrl-C to stop)")
    try:
        threading.Event().wait() if thread is None else thread.join()
    except KeyboardInterrupt:
        server.shutdown()


@metrics_group.command("show")
@common
def show(ctx: Context):
    """Print the metrics once in the Prometheus text format (or, with --json, as parsed samples)."""
    from prometheus_client.parser import text_string_to_metric_families

    from backup_tasks import metrics

    text = metrics.exposition(ctx.rt).decode()
    if not ctx.json_mode:
        sys.stdout.write(text)
        return
    data = {f.name: [{"labels": s.labels, "value": s.value} for s in f.samples] for f in text_string_to_metric_families(text)}
    ctx.out.result(data, lambda c, d: None)


COMMANDS = (metrics_group,)
