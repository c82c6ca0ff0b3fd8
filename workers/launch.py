"""Start this host's worker on exactly the queues it should consume.

    BACKUP_CONFIG=/etc/backup-tasks/targets.toml python -m workers.launch --host app01

A host consumes ``host.<name>`` for its own targets' chains; it also takes ``verify``
only when it holds identities (workers without them cannot decrypt, by design), and
``maintenance`` for housekeeping. A task for host A never lands on host B because B
never subscribes to ``host.A``.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys

from backup_tasks import config as config_mod
from backup_tasks.routing import MAINTENANCE_QUEUE, VERIFY_QUEUE, host_queue


def queues_for(cfg: config_mod.Config, host: str) -> list[str]:
    queues = [host_queue(host)] if any(t.host == host for t in cfg.targets.values()) else []
    identities = cfg.settings.identities_file
    if identities and os.access(identities, os.R_OK):
        queues.append(VERIFY_QUEUE)
    queues.append(MAINTENANCE_QUEUE)
    return queues


def argv_for(cfg: config_mod.Config, host: str, concurrency: int) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "backup_tasks.celery_app", "worker",
            "-Q", ",".join(queues_for(cfg, host)), "-n", f"{host}@%h", "-c", str(concurrency),
            "-E", "-l", "INFO"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=os.environ.get("BACKUP_HOST") or socket.gethostname().split(".")[0])
    # Stages are I/O and compression bound; zstd already uses 2 threads per stage.
    parser.add_argument("--concurrency", type=int, default=max(1, (os.cpu_count() or 2) // 2))
    parser.add_argument("--print", action="store_true", help="print the celery command instead of running it")
    args = parser.parse_args(argv)
    os.environ["BACKUP_HOST"] = args.host  # credentials are checked only for this host's targets
    cfg = config_mod.load(os.environ.get("BACKUP_CONFIG"))
    command = argv_for(cfg, args.host, args.concurrency)
    if args.print:
        print(" ".join(command))
        return
    os.execv(command[0], command)


if __name__ == "__main__":
    main()
