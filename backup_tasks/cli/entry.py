"""The backupctl script: a ``wal get`` the restore's read-ahead can answer skips importing the CLI (cli/fast_wal.py)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from backup_tasks.cli import fast_wal

    argv = list(sys.argv[1:] if argv is None else argv)
    served = fast_wal.serve(argv)
    if served is not None:
        return served
    from backup_tasks.cli.main import main as full

    return full(argv)
