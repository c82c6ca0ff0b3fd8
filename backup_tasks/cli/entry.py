"""The backupctl script: a ``wal get`` the restore's read-ahead can answer skips importing the CLI (cli/fast_wal.py).

``run`` is what the installed script and ``python -m backup_tasks.cli`` call; ``main`` is what
tests and other Python callers call, and it returns the exit code without ending the process.
"""

from __future__ import annotations

import os
import sys


def main(argv: list[str] | None = None) -> int:
    from backup_tasks.cli import fast_wal

    argv = list(sys.argv[1:] if argv is None else argv)
    served = fast_wal.serve(argv)
    if served is not None:
        return served
    from backup_tasks.cli.main import main as full

    return full(argv)


def run() -> None:
    """Run the command, finish what the interpreter's exit would finish, and end the process with ``os._exit``.

    A normal interpreter exit then tears down every module and object it imported (Celery,
    kombu, SQLAlchemy, the catalog's mapping): 0.1-0.2 s of CPU after the command's work,
    paid by every ``wal get`` PostgreSQL waits on and every restore a drill times. What that
    teardown did that matters is done here, in the interpreter's order: non-daemon threads
    are joined, atexit handlers run (logging flushes and closes its handlers, temporary
    directories go, multiprocessing reaps its children), the catalog's connections are
    closed (SQLite checkpoints and removes its -wal file when the last one closes), and
    stdout and stderr are flushed. A reader that closed the pipe early (``| head``) gets exit
    code 1 and no traceback, as click gives when the pipe closes while a command writes.

    Only the script's outermost layer may call this: it never returns.
    """
    from backup_tasks.cli import startup_gc

    startup_gc.defer()
    try:
        code = main()
    except SystemExit as exc:  # main turns click's exits into codes; this catches anything before click
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else _message(exc.code))
    # KeyboardInterrupt and the like propagate: the interpreter reports and exits as it always did.
    _finish()
    os._exit(_flush(code))


def _message(text: object) -> int:
    """``sys.exit("text")``: the interpreter prints the text and exits 1."""
    sys.stderr.write(f"{text}\n")
    return 1


def _finish() -> None:
    """What the interpreter's exit does before its teardown, plus closing the catalog that teardown closed."""
    import atexit
    import threading

    shutdown = getattr(threading, "_shutdown", None)  # joins non-daemon threads and thread pools, as the interpreter does
    if shutdown is not None:
        shutdown()
    atexit._run_exitfuncs()
    runtime = sys.modules.get("backup_tasks.ops.runtime")  # never imported: nothing was opened
    if runtime is not None:
        try:
            runtime.close()
        except Exception as exc:  # noqa: BLE001 - the command's outcome stands; say what was left open
            sys.stderr.write(f"warning: closing the catalog failed: {type(exc).__name__}: {exc}\n")


def _flush(code: int) -> int:
    """Flush stdout and stderr; exit code 1 when stdout's reader has gone and the output was not delivered.

    The originals are flushed too: something may have replaced ``sys.stdout`` (click does after a
    broken pipe), and the teardown skipped here is what would have flushed them.
    """
    streams = [sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__]
    for stream in [s for i, s in enumerate(streams) if s is not None and s not in streams[:i]]:
        try:
            stream.flush()
        except BrokenPipeError:
            if stream in (sys.stdout, sys.__stdout__) and code == 0:
                code = 1
        except (OSError, ValueError):  # a closed stream: nothing left to deliver to it
            pass
    return code
