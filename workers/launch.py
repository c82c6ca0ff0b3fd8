"""Start this host's worker on exactly the queues it should consume.

    BACKUP_CONFIG=/etc/backup-tasks/targets.toml python -m workers.launch --host app01 [--drill] [--print]

A host consumes ``host.<name>`` for its own targets' chains; it also takes ``verify``
only when it holds identities (workers without them cannot decrypt, by design), ``drill``
only when asked (``--drill``: a drill host reaches the drill servers and holds
identities), and ``maintenance`` for housekeeping unless ``--no-maintenance``. A task for
host A never lands on host B because B never subscribes to ``host.A``.

Concurrency (``-c``): ``--concurrency``, else ``[settings] worker_concurrency``, else four
or half the cores, whichever is more. Four slots let one chain's dump, compress, encrypt
and upload run at once, each following the one before it like a shell pipeline; with
``-c 1`` the same chain runs one stage after another. The pool is prefork, the one that enforces hard time limits, and each process
takes one message at a time (prefetch 1, ``-O fair``), so a long dump never holds short
tasks hostage behind it. Children are recycled after ``MAX_TASKS_PER_CHILD`` tasks to
bound the memory a long-lived process accumulates.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys

from backup_tasks import config as config_mod
from backup_tasks.defaults import PIPELINE_SLOTS
from backup_tasks.errors import BackupError, InputError
from backup_tasks.orchestration.routing import DRILL_QUEUE, MAINTENANCE_QUEUE, VERIFY_QUEUE, host_queue

MAX_TASKS_PER_CHILD = 200


def queues_for(cfg: config_mod.Config, host: str, *, drill: bool = False, maintenance: bool = True) -> list[str]:
    queues = [host_queue(host)] if any(t.host == host for t in cfg.targets.values()) else []
    identities = cfg.settings.identities_file
    can_decrypt = bool(identities and os.access(identities, os.R_OK))
    if can_decrypt:
        queues.append(VERIFY_QUEUE)
    if drill and can_decrypt:
        queues.append(DRILL_QUEUE)
    if maintenance:
        queues.append(MAINTENANCE_QUEUE)
    return queues


def concurrency_for(cfg: config_mod.Config, requested: int | None = None) -> int:
    if requested:
        return requested
    if cfg.settings.worker_concurrency:
        return cfg.settings.worker_concurrency
    return max(PIPELINE_SLOTS, (os.cpu_count() or 2) // 2)


def argv_for(cfg: config_mod.Config, host: str, concurrency: int, *, drill: bool = False, maintenance: bool = True) -> list[str]:
    queues = queues_for(cfg, host, drill=drill, maintenance=maintenance)
    if not queues:
        raise InputError(f"host '{host}' has nothing to consume: no targets on it, no identities for verify, no maintenance",
                         "check --host against the targets file, or drop --no-maintenance")
    return [sys.executable, "-m", "celery", "-A", "backup_tasks", "worker",
            "-Q", ",".join(queues), "-n", f"{host}@%h", "-c", str(concurrency), "-P", "prefork",
            "-O", "fair", "--max-tasks-per-child", str(MAX_TASKS_PER_CHILD), "-E", "-l", "INFO"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=os.environ.get("BACKUP_HOST") or socket.gethostname().split(".")[0])
    parser.add_argument("--concurrency", type=int, default=None, help="worker processes (default: worker_concurrency, else 4 or cores/2, whichever is more)")
    parser.add_argument("--drill", action="store_true", help="also run restore drills (queue 'drill'); needs identities")
    parser.add_argument("--no-maintenance", dest="maintenance", action="store_false", help="do not take housekeeping tasks")
    parser.add_argument("--print", action="store_true", help="print the celery command instead of running it")
    args = parser.parse_args(argv)
    os.environ["BACKUP_HOST"] = args.host  # credentials are checked only for this host's targets
    try:
        cfg = config_mod.load(os.environ.get("BACKUP_CONFIG"))
        command = argv_for(cfg, args.host, concurrency_for(cfg, args.concurrency), drill=args.drill, maintenance=args.maintenance)
    except BackupError as exc:
        print(f"error: {exc.message}" + (f"\nwhat to do: {exc.remedy}" if exc.remedy else ""), file=sys.stderr)
        sys.exit(exc.exit_code)
    if args.print:
        print(" ".join(command))
        return
    os.execv(command[0], command)


if __name__ == "__main__":
    main()
