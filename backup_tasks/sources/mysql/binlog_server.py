"""What a MySQL/MariaDB server says about its binary log, and copying closed binary logs off it.

Point-in-time recovery replays the binary log, so a ``binlog = true`` target needs a
server that writes one (``log_bin``), in ROW format: statement-based events replay
non-deterministic statements (``NOW()``, ``UUID()``, ``LIMIT`` without ``ORDER BY``)
to different rows than the originals touched.

A closed log is copied with ``mariadb-binlog --read-from-remote-server --raw``: the
byte-exact file, read over the client protocol, so the worker needs no access to the
server's data directory. The password goes in a 0600 option file, never argv.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from backup_tasks.errors import SourceError
from backup_tasks.sources.db import dsn, pipes
from backup_tasks.sources.db.dsn import Server
from backup_tasks.sources.mysql.client import connect, tool

#: what to change on the server, for the message of a target whose server writes no binary log
LOG_BIN_REMEDY = ("enable the binary log in the server's configuration ([mariadbd] log_bin = mysql-bin, server_id = 1, "
                  "binlog_format = ROW) and restart it; or remove binlog = true from the target")


@dataclass(frozen=True)
class BinlogSettings:
    log_bin: bool
    binlog_format: str
    server_id: int

    def warnings(self) -> list[str]:
        if self.log_bin and self.binlog_format.upper() != "ROW":
            return [f"binlog_format is {self.binlog_format}, not ROW: a statement-based log replays non-deterministic "
                    "statements (NOW(), UUID(), LIMIT without ORDER BY, triggers) to rows other than the ones they changed; "
                    "set binlog_format = ROW on the server"]
        return []


def binlog_tool(bin_dir: str | None = None) -> str:
    return tool("mariadb-binlog", "mysqlbinlog", bin_dir=bin_dir)


def settings_of(cur) -> BinlogSettings:
    cur.execute("SELECT @@log_bin, @@binlog_format, @@server_id")
    log_bin, fmt, server_id = cur.fetchone()
    return BinlogSettings(bool(int(log_bin)), str(fmt), int(server_id))


def require_log_bin(settings: BinlogSettings, server: Server, target: str) -> None:
    """SourceError naming the server setting when the server writes no binary log."""
    if not settings.log_bin:
        raise SourceError(f"target '{target}' has binlog = true but the server {server.address} writes no binary log "
                          "(log_bin is OFF)", LOG_BIN_REMEDY)


def check(server: Server, target: str) -> BinlogSettings:
    """Connect and read the server's binary log settings; SourceError when it has none."""
    conn = connect(server, what=f"binary log check of target '{target}'", database=False)
    try:
        found = settings_of(conn.cursor())
    finally:
        conn.close()
    require_log_bin(found, server, target)
    return found


def rotate_and_list(server: Server, target: str) -> tuple[BinlogSettings, list[tuple[str, int]], str]:
    """FLUSH BINARY LOGS, then every log the server still has as (name, size), and the name of the active one.

    Rotating first closes the log that was being written, so everything committed up to
    now is in a closed file that can be shipped.
    """
    import pymysql

    conn = connect(server, what=f"binary log shipping of target '{target}'", database=False)
    try:
        cur = conn.cursor()
        found = settings_of(cur)
        require_log_bin(found, server, target)
        try:
            cur.execute("FLUSH BINARY LOGS")
            cur.execute("SHOW BINARY LOGS")
            logs = [(str(r[0]), int(r[1])) for r in cur.fetchall()]
            cur.execute("SHOW MASTER STATUS")
            active = str(cur.fetchone()[0])
        except pymysql.err.MySQLError as exc:
            raise SourceError(f"binary log shipping of target '{target}' failed on {server.address}: {exc.args[-1]}",
                              f"GRANT RELOAD, BINLOG MONITOR, REPLICATION SLAVE ON *.* TO '{server.user}'@...") from None
    finally:
        conn.close()
    return found, logs, active


def fetch(server: Server, name: str, dest_dir: Path, *, target: str, bin_dir: str | None = None) -> Path:
    """Copy the closed binary log ``name`` byte for byte into ``dest_dir`` (private); its path there."""
    prefix = dest_dir / "raw-"
    out = Path(f"{prefix}{name}")
    out.unlink(missing_ok=True)
    with dsn.mysql_defaults_file(server) as cnf:
        argv = [binlog_tool(bin_dir), f"--defaults-extra-file={cnf}", "--read-from-remote-server", "--raw",
                f"--result-file={prefix}", name]
        done = subprocess.run(argv, capture_output=True, text=True, env=dsn.child_env(server), stdin=subprocess.DEVNULL)
    if done.returncode != 0 or not out.exists():
        raise SourceError(f"copying binary log {name} of target '{target}' from {server.address} failed: "
                          f"{pipes.last_lines(done.stderr, secret=server.password) or 'no file was written'}",
                          f"the user needs REPLICATION SLAVE: GRANT REPLICATION SLAVE ON *.* TO '{server.user}'@...")
    out.chmod(0o600)
    return out


def snapshot_counts(server: Server, target: str) -> dict:
    """Row counts of every table in one consistent snapshot, with the binlog position of that same snapshot.

    MariaDB reports ``binlog_snapshot_file``/``binlog_snapshot_position`` inside a
    ``START TRANSACTION WITH CONSISTENT SNAPSHOT``: the log position at exactly the
    instant the counts see, so a replay stopped there must give the same counts, under
    any write load.
    """
    from backup_tasks.sources.mysql.client import base_tables, count_rows

    conn = connect(server, what=f"drill snapshot of target '{target}'")
    try:
        cur = conn.cursor()
        cur.execute("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        cur.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT")
        cur.execute("SHOW STATUS LIKE 'binlog_snapshot_%'")
        status = {str(k).lower(): v for k, v in cur.fetchall()}
        cur.execute("SELECT UTC_TIMESTAMP(6)")
        at = cur.fetchone()[0]
        counts = count_rows(cur, base_tables(cur, server.database))
        conn.commit()
    finally:
        conn.close()
    if not status.get("binlog_snapshot_file"):
        raise SourceError(f"the server {server.address} of target '{target}' does not report binlog_snapshot_file",
                          "use MariaDB 10.0 or later with log_bin on")
    return {"file": str(status["binlog_snapshot_file"]), "position": int(status["binlog_snapshot_position"]),
            "at": at, "tables": counts}
