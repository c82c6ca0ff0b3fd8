"""Running a database client tool with a byte stream on one end of a pipe.

Dumps read the tool's stdout into the stage's output; restores and checks feed the
plaintext stream into its stdin. stderr goes to an unnamed temporary file (never a pipe
we might forget to read, which deadlocks a chatty tool) and comes back as text for the
error message. A deadline kills the tool from a timer thread, because a blocked write
would never come back to look at the clock.
"""

from __future__ import annotations

import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import BinaryIO, Callable

from backup_tasks import defaults
from backup_tasks.redaction import redact
from backup_tasks.errors import DeadlineExceeded


@dataclass
class Outcome:
    returncode: int
    stderr: str
    #: False when the tool stopped reading its stdin before the stream ended
    fed_all: bool = True


def _watchdog(proc: subprocess.Popen, deadline: float | None) -> tuple[threading.Timer | None, list[bool]]:
    fired: list[bool] = []
    if deadline is None:
        return None, fired

    def kill() -> None:
        fired.append(True)
        proc.kill()

    timer = threading.Timer(max(0.0, deadline - time.monotonic()), kill)
    timer.daemon = True
    timer.start()
    return timer, fired


def _finish(proc, errfile, timer, fired, what: str, fed_all: bool = True) -> Outcome:
    rc = proc.wait()
    if timer is not None:
        timer.cancel()
    errfile.seek(0)
    stderr = errfile.read().decode("utf-8", "replace")
    errfile.close()
    if fired:
        raise DeadlineExceeded(f"{what} ran past its deadline and was stopped", "raise the time limit or restore on a faster server")
    return Outcome(rc, stderr, fed_all)


def _abandon(proc, errfile, timer) -> None:
    """The caller failed mid-stream (e.g. a full disk): stop the tool and release what it held."""
    proc.kill()
    proc.wait()
    if timer is not None:
        timer.cancel()
    errfile.close()


def read_from(argv: list[str], out: BinaryIO, *, env: dict, what: str, deadline: float | None = None,
              on_chunk: Callable[[bytes], None] | None = None, pass_fds: tuple = ()) -> Outcome:
    """Run ``argv`` and copy its stdout to ``out`` in chunks."""
    errfile = tempfile.TemporaryFile()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errfile, env=env, pass_fds=pass_fds)
    timer, fired = _watchdog(proc, deadline)
    try:
        while True:
            chunk = proc.stdout.read1(defaults.CHUNK_SIZE)  # a BufferedReader: returns what the pipe has
            if not chunk:
                break
            if on_chunk is not None:
                on_chunk(chunk)
            out.write(chunk)
    except BaseException:
        _abandon(proc, errfile, timer)
        raise
    finally:
        proc.stdout.close()
    return _finish(proc, errfile, timer, fired, what)


def feed_into(argv: list[str], stream: BinaryIO, *, env: dict, what: str, deadline: float | None = None,
              stdout=subprocess.DEVNULL) -> Outcome:
    """Run ``argv`` with ``stream`` on its stdin; a tool that exits early is not an error here."""
    errfile = tempfile.TemporaryFile()
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=stdout, stderr=errfile, env=env)
    timer, fired = _watchdog(proc, deadline)
    fed_all = True
    try:
        while True:
            chunk = stream.read(defaults.CHUNK_SIZE)
            if not chunk:
                break
            try:
                proc.stdin.write(chunk)
            except BrokenPipeError:
                fed_all = False
                break
        try:
            proc.stdin.close()
        except BrokenPipeError:
            fed_all = False
    except BaseException:
        _abandon(proc, errfile, timer)
        raise
    return _finish(proc, errfile, timer, fired, what, fed_all)


def last_lines(text: str, n: int = 5, *, secret: str | None = None) -> str:
    """The end of a tool's stderr for an error message, with the password (if any) blotted out in any encoding."""
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    out = " | ".join(lines[-n:])
    return redact(out, [secret] if secret else ())[-1500:]
