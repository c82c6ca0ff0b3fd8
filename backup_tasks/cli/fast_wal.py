"""``backupctl wal get`` for a segment the restore's read-ahead already holds, before the CLI is even imported.

PostgreSQL starts restore_command once per segment and waits for it; importing the whole
command line (click, the catalog's SQLAlchemy, every command) costs more than replaying a
segment. This path needs only the standard library: it recognises exactly
``[--config C] wal get [--config C] --target T NAME PATH``, renames a ready segment
from the read-ahead directory (ops/postgres_pitr/wal_handover.py) into PATH and exits 0, and answers
a timeline history file from the restore's copies (exit 1 for one the archive did not
hold when the restore began). A segment
that is not ready, or a history file, is fetched by the command's own code (cli/wal.py
``run_get``) without building the rest of the CLI: it answers a missing file with exit 1
and a failure with 126, and starts the read-ahead. Anything else goes to the full CLI.
"""

from __future__ import annotations

import re
from pathlib import Path

SEGMENT = re.compile(r"[0-9A-F]{24}")
HISTORY = re.compile(r"[0-9A-F]{8}\.history")


def parse(argv: list[str]) -> tuple[str | None, str, str, str] | None:
    """(config, target, name, path) of a plain ``wal get``; None for anything else."""
    rest = list(argv)
    target = config = None
    positional: list[str] = []
    words: list[str] = []
    while rest:
        arg = rest.pop(0)
        if arg in ("--config", "--target") and rest:
            value = rest.pop(0)
        elif arg.startswith(("--config=", "--target=")):
            arg, value = arg.split("=", 1)
        elif arg.startswith("-"):
            return None
        else:
            (words if len(words) < 2 else positional).append(arg)
            continue
        if arg == "--config":
            config = value
        elif len(words) < 2:
            return None  # --target before the command's name is not a global option: let click say so
        else:
            target = value
    if words != ["wal", "get"] or target is None or len(positional) != 2:
        return None
    return config, target, positional[0], positional[1]


def serve(argv: list[str]) -> int | None:
    """``wal get``'s exit status; None: not a plain ``wal get``, run the full CLI."""
    call = parse(argv)
    if call is None:
        return None
    config, target, name, path = call
    if SEGMENT.fullmatch(name) or HISTORY.fullmatch(name):
        from backup_tasks.ops.postgres_pitr import wal_handover

        try:
            if SEGMENT.fullmatch(name):
                if wal_handover.take(Path(path), target, name):
                    return 0
            elif (answer := wal_handover.history(Path(path), target, name)) is not None:
                return answer
        except OSError:
            pass  # fetched below, which says what is wrong if it is more than a missing read-ahead
    from backup_tasks.cli.context import Context, configure_logging
    from backup_tasks.cli.wal import run_get

    configure_logging()
    return run_get(Context(config, False), target, name, Path(path))
