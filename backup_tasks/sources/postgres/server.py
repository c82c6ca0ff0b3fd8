"""Starting a restored data directory as the cluster's OS user, and watching its recovery end.

PostgreSQL refuses to run as root, and the files of a data directory must belong to the
user that runs it: a restore run by root hands the directory to that user and starts
the server through ``runuser``. Without a Unix socket (``unix_socket_directories = ''``)
the copy only listens on 127.0.0.1 at the port asked for, so it can never be mistaken
for the live cluster's socket.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import time
from pathlib import Path

from backup_tasks.errors import ConfigError, PermanentError, SourceError
from backup_tasks.sources.db import dsn
from backup_tasks.sources.db.dsn import Server

LOG_NAME = "backup-tasks-recovery.log"
#: PostgreSQL's words when the WAL ran out before a commit later than recovery_target_time was seen
NOT_REACHED = "recovery ended before configured recovery target was reached"


class TargetNotReached(SourceError):
    """Recovery replayed every stored WAL file without meeting a commit after the target time."""
POLL_SECONDS = 0.5
#: how long a just-started postmaster may take to show up at all
STARTUP_GRACE_SECONDS = 30


def bin_dir_for(version: str, configured: str | None) -> Path:
    """Where pg_ctl lives: options.bin_dir, else Debian's /usr/lib/postgresql/<major>/bin, else PATH."""
    if configured:
        return Path(configured)
    major = version.split(".")[0]
    debian = Path(f"/usr/lib/postgresql/{major}/bin")
    if (debian / "pg_ctl").exists():
        return debian
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).parent
    raise ConfigError(f"no pg_ctl for PostgreSQL {major} on this host",
                      "install the PostgreSQL server package of that version, or set options.bin_dir")


def _as_user(os_user: str, argv: list[str]) -> list[str]:
    if os.geteuid() == 0 and os_user != "root":
        return ["runuser", "-u", os_user, "--", *argv]
    return argv


def hand_over(datadir: Path, os_user: str) -> None:
    """Make ``os_user`` own the data directory (only root can, and only root needs to)."""
    if os.geteuid() != 0:
        return
    try:
        entry = pwd.getpwnam(os_user)
    except KeyError:
        raise ConfigError(f"no OS user '{os_user}' on this host to run the restored server",
                          "create it, or run the restore as the user that should own the data directory") from None
    for root, dirs, files in os.walk(datadir):
        os.chown(root, entry.pw_uid, entry.pw_gid)
        for name in dirs + files:
            os.chown(os.path.join(root, name), entry.pw_uid, entry.pw_gid, follow_symlinks=False)


def start(datadir: Path, port: int, *, bin_dir: Path, os_user: str) -> Path:
    """Start the server on 127.0.0.1:``port`` without waiting; returns its log file."""
    log = datadir / LOG_NAME
    argv = [str(bin_dir / "pg_ctl"), "-D", str(datadir), "-W", "-l", str(log), "-o",
            f"-c port={port} -c listen_addresses=127.0.0.1 -c unix_socket_directories=''", "start"]
    done = subprocess.run(_as_user(os_user, argv), capture_output=True, text=True)
    if done.returncode != 0:
        raise SourceError(f"pg_ctl could not start the restored server in {datadir}: {done.stderr.strip() or done.stdout.strip()}",
                          f"read {log}")
    return log


def running(datadir: Path, *, bin_dir: Path, os_user: str) -> bool:
    done = subprocess.run(_as_user(os_user, [str(bin_dir / "pg_ctl"), "-D", str(datadir), "status"]), capture_output=True)
    return done.returncode == 0


def stop(datadir: Path, *, bin_dir: Path, os_user: str, mode: str = "fast") -> None:
    subprocess.run(_as_user(os_user, [str(bin_dir / "pg_ctl"), "-D", str(datadir), "-m", mode, "-w", "stop"]),
                   capture_output=True)


def log_tail(log: Path, n: int = 8) -> str:
    try:
        return " | ".join(log.read_text(errors="replace").strip().splitlines()[-n:])
    except OSError:
        return "(no log)"


def wait_for_promotion(server: Server, datadir: Path, log: Path, *, bin_dir: Path, os_user: str,
                       timeout: float) -> dict:
    """Poll until recovery has ended (the server left recovery); the time and LSN it reached.

    A server that stops while recovering (a missing segment, a target never reached)
    is a failure quoting the end of its log.
    """
    import psycopg2

    deadline = time.monotonic() + timeout
    # pg_ctl -W returns before the postmaster wrote its pid file: "not running" counts only once it was seen running
    seen, grace = False, time.monotonic() + STARTUP_GRACE_SECONDS
    while True:
        alive = running(datadir, bin_dir=bin_dir, os_user=os_user)
        seen = seen or alive
        if not alive and (seen or time.monotonic() > grace):
            if NOT_REACHED in log_tail(log, 40):
                raise TargetNotReached(f"recovery in {datadir} replayed all stored WAL without passing the target time",
                                       "the archive holds nothing after the target: replay all of it")
            raise SourceError(f"the restored server in {datadir} stopped during recovery: {log_tail(log)}",
                              f"read {log}; a segment may be missing from the archive (backupctl pitr TARGET)")
        try:
            conn = psycopg2.connect(**dsn.psycopg2_kwargs(server))
        except psycopg2.OperationalError:
            conn = None
        if conn is not None:
            try:
                conn.autocommit = True
                cur = conn.cursor()
                cur.execute("SELECT pg_is_in_recovery(), pg_last_xact_replay_timestamp(), pg_last_wal_replay_lsn()::text, "
                            "(SELECT timeline_id FROM pg_control_checkpoint())")
                in_recovery, reached, lsn, timeline = cur.fetchone()
            finally:
                conn.close()
            if not in_recovery:
                return {"reached_time": reached, "reached_lsn": lsn, "timeline": timeline}
        if time.monotonic() > deadline:
            raise PermanentError(f"the restored server in {datadir} was still recovering after {timeout:.0f} s",
                                 f"it keeps running; watch {log} and connect when it is ready")
        time.sleep(POLL_SECONDS)
