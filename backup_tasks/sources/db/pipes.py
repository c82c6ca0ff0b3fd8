"""Running a database client tool with a byte stream on one end of a pipe.

Dumps read the tool's stdout into the stage's output; restores and checks feed the
plaintext stream into its stdin. stderr goes to an unnamed temporary file (never a pipe
we might forget to read, which deadlocks a chatty tool) and comes back as text for the
error message. A deadline kills the tool from a timer thread, because a blocked write
would never come back to look at the clock.
"""

from __future__ import annotations

import fcntl
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


#: with ``gather``: the pipe's size asked for (Linux's default limit for any user), the read
#: that counts as short, and the nap after it (a 1 MiB pipe fills in 2 ms only above 500 MB/s)
GATHER_PIPE_SIZE = 1 << 20
GATHER_SHORT = 256 << 10
GATHER_NAP_SECONDS = 0.002
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


def read_from(argv: list[str], out: BinaryIO, *, env: dict, what: str, deadline: float | None = None,
              on_chunk: Callable[[bytes], None] | None = None, pass_fds: tuple = (), gather: bool = False) -> Outcome:
    """Run ``argv`` and copy its stdout to ``out`` in chunks.

    ``gather``: for a tool that writes its output a few KiB at a time (mariadb-dump through
    stdio, pg_dump a data block at a time), a reader that keeps up gets each few KiB as one chunk: 40,000 chunks for
    220 MB, each paying syscalls, hashing and Python calls downstream. With ``gather`` the
    pipe holds 1 MiB and a short read is followed by a nap of 2 ms, so chunks average
    ~200 KiB; the tool never waits for room meanwhile (it would need to write 500 MB/s).
    """
    errfile = tempfile.TemporaryFile()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errfile, env=env, pass_fds=pass_fds)
    timer, fired = _watchdog(proc, deadline)
    nap = gather and _enlarge(proc.stdout.fileno())
    try:
        while True:
            chunk = proc.stdout.read1(defaults.CHUNK_SIZE)  # a BufferedReader: returns what the pipe has
            if not chunk:
                break
            if on_chunk is not None:
                on_chunk(chunk)
            out.write(chunk)
            if nap and len(chunk) < GATHER_SHORT:
                time.sleep(GATHER_NAP_SECONDS)
    except BaseException:
        _abandon(proc, errfile, timer)
        raise
    finally:
        proc.stdout.close()
    return _finish(proc, errfile, timer, fired, what)


def _enlarge(fd: int) -> bool:
    """Ask for a 1 MiB pipe; False where the system refuses (a lower pipe-max-size, or a user over its pipe quota)."""
    try:
        return fcntl.fcntl(fd, _F_SETPIPE_SZ, GATHER_PIPE_SIZE) >= GATHER_PIPE_SIZE
    except OSError:
        return False


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
