"""Replaying binary logs into a database: one ``mariadb-binlog … | mariadb`` session.

One session, because temporary tables and session variables live in the session that
made them: split over several client sessions, a log that uses a temporary table
replays wrong. ``--start-position`` applies to the first file (where the dump's
snapshot was taken), ``--stop-datetime`` stops before the first event at or after the
target time, ``--database`` keeps only the source database's events, and
``--rewrite-db`` gives them the restored database's name. The text passes through
here on its way to the client, so the last event applied is known without a second
read. A transaction cut by the stop time is never committed: the client's session
ends and the server rolls it back.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from backup_tasks.errors import SourceError
from backup_tasks.sources.db import dsn, pipes
from backup_tasks.sources.db.dsn import Server
from backup_tasks.sources.mysql.binlog_server import binlog_tool
from backup_tasks.sources.mysql.client import client_tool

_EVENT = re.compile(rb"^#(\d{6} +\d{1,2}:\d{2}:\d{2}) server id (\d+) +end_log_pos (\d+)(.*)$")
_GTID = re.compile(rb"\bGTID (\d+-\d+-\d+)")


class _Tracker:
    """Reads the decoded log as it streams by: the newest committed transaction and where it ended."""

    def __init__(self, files: list[str]) -> None:
        self.files = files
        self.file_index = -1
        self.current: dict = {}
        self.last: dict | None = None
        self.transactions = 0
        self.gtid: str | None = None
        self.ddl = False
        self.pending: dict | None = None
        self._carry = b""

    def feed(self, chunk: bytes) -> None:
        block = self._carry + chunk
        cut = block.rfind(b"\n") + 1
        for line in block[:cut].split(b"\n"):
            self._line(line)
        self._carry = block[cut:][-65536:]

    def _line(self, line: bytes) -> None:
        if line.startswith(b"#") and b"server id" in line:
            m = _EVENT.match(line)
            if not m:
                return
            rest = m.group(4)
            if b"Start: binlog" in rest:
                self.file_index += 1
            g = _GTID.search(rest)
            if g:
                self._finish_ddl()
                self.gtid, self.ddl = g.group(1).decode(), rest.rstrip().endswith(b"ddl")
            self.current = {"at": m.group(1).decode(), "end_log_pos": int(m.group(3))}
            if self.ddl:
                self.pending = dict(self.current)
        elif line.startswith(b"COMMIT/*!*/;"):
            self._commit(self.current)

    def _finish_ddl(self) -> None:
        """A DDL statement is its own transaction and has no COMMIT: it counts once the next one starts, or at the end."""
        if self.ddl and self.pending:
            self._commit(self.pending)
        self.ddl, self.pending = False, None

    def finish(self) -> None:
        self.feed(b"\n")
        self._finish_ddl()

    def _commit(self, event: dict) -> None:
        if not event:
            return
        self.transactions += 1
        at = datetime.strptime(" ".join(event["at"].split()), "%y%m%d %H:%M:%S").replace(tzinfo=timezone.utc)
        self.last = {"file": self.files[max(0, min(self.file_index, len(self.files) - 1))],
                     "end_log_pos": event["end_log_pos"], "at": at.isoformat().replace("+00:00", "Z"), "gtid": self.gtid}


#: the decoder sets each transaction's original GTID (and origin server) before it; replayed as they are,
#: the restored rows would enter the destination server's binary log under GTIDs that already exist
#: there (a restore next to the source database): out of order for its replicas and for this very
#: shipping. Dropped, the server gives the replayed transactions GTIDs of its own, like any client's.
_GTID_SETTERS = re.compile(rb"^/\*M?!100001 SET @@session\.(?:gtid_domain_id|server_id|gtid_seq_no)=\d+\*//\*!\*/;\n", re.M)


class _Scanned:
    """The decoder's stdout as a readable stream: whole lines, the tracker reading them, the GTID settings left out."""

    def __init__(self, raw, tracker: _Tracker) -> None:
        self.raw, self.tracker = raw, tracker
        self._carry = b""

    def read(self, n: int = -1) -> bytes:
        while True:
            chunk = self.raw.read1(n if n and n > 0 else 1 << 20)
            if not chunk:  # the end: whatever is left is the last (unterminated) line
                out, self._carry = self._carry, b""
                if out:
                    self.tracker.feed(out)
                return out
            block = self._carry + chunk
            cut = block.rfind(b"\n") + 1
            if not cut:
                self._carry = block
                continue
            self._carry = block[cut:]
            out = _GTID_SETTERS.sub(b"", block[:cut])
            self.tracker.feed(out)
            if out:
                return out


def _ends_soon(proc: subprocess.Popen, wait: float = 5.0) -> bool:
    """Whether the decoder ends on its own once its output is closed (it normally already has)."""
    try:
        proc.wait(timeout=wait)
        return True
    except subprocess.TimeoutExpired:
        return False


def replay(files: list[Path], *, start_position: int, stop_datetime: str | None, source_database: str, dest: Server,
           bin_dir: str | None = None, deadline: float | None = None, stop_position: int | None = None) -> dict:
    """Apply ``files`` (binlogs in order) to ``dest.database`` from ``start_position`` up to ``stop_datetime`` (UTC).

    With ``stop_position`` instead, replay ends at that position of the last file (a drill
    stops exactly where its snapshot was taken).

    Returns the last transaction applied (file, end position, time, GTID) and how many.
    """
    names = [f.name.split("raw-", 1)[-1] for f in files]
    tracker = _Tracker(names)
    stop = f"--stop-position={stop_position}" if stop_position is not None else f"--stop-datetime={stop_datetime}"
    # Not strict about GTID order: a log may hold GTIDs out of order (e.g. from an older restore), and replay
    # follows positions and times, not GTIDs.
    decode = [binlog_tool(bin_dir), "--no-defaults", "--skip-gtid-strict-mode", f"--start-position={start_position}", stop,
              f"--database={source_database}"]
    if dest.database != source_database:
        decode.append(f"--rewrite-db={source_database}->{dest.database}")
    decode += [str(f) for f in files]
    env = {**dsn.child_env(dest), "TZ": "UTC"}  # --stop-datetime is read in the tool's local time zone
    what = f"binary log replay into {dest.database} on {dest.address}"
    errfile = tempfile.TemporaryFile()
    decoder = subprocess.Popen(decode, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errfile, env=env)
    try:
        with dsn.mysql_defaults_file(dest) as cnf:
            argv = [client_tool(bin_dir), f"--defaults-extra-file={cnf}", "--binary-mode", "--batch", dest.database]
            outcome = pipes.feed_into(argv, _Scanned(decoder.stdout, tracker), env=env, what=what, deadline=deadline)
    except BaseException:
        decoder.kill()
        raise
    finally:
        decoder.stdout.close()
        if decoder.poll() is None and not _ends_soon(decoder):
            decoder.kill()  # the client stopped reading: the decoder would block on a full pipe forever
        rc = decoder.wait()
        errfile.seek(0)
        decode_err = errfile.read().decode("utf-8", "replace")
        errfile.close()
    tracker.finish()
    # The client first: when it stops on a statement, the decoder dies of the closed pipe, which says nothing.
    if outcome.returncode != 0 or not outcome.fed_all:
        raise SourceError(f"{what} failed: {pipes.last_lines(outcome.stderr, secret=dest.password) or 'the client stopped reading'}",
                          "the restored database holds the dump and part of the log; see the message, then restore again with --force")
    if rc != 0:
        raise SourceError(f"{what} failed: {Path(decode[0]).name}: {pipes.last_lines(decode_err)}",
                          "check that the stored binary logs are complete (backupctl pitr TARGET)")
    return {"last_event": tracker.last, "transactions": tracker.transactions, "files": names}
