"""The dump side: ``mariadb-dump``/``mysqldump --single-transaction`` with row counts from the same instant.

Exact row counts. mysqldump opens its own consistent snapshot, and MySQL cannot share
a snapshot between connections. So, like mysqldump's own ``--master-data``, we take a
global read lock for a moment: FLUSH TABLES WITH READ LOCK, open our snapshot, read the
binlog/GTID position, start the dump tool, and release the lock as soon as the tool's
output shows that its snapshot is open (the first table, routine or event section, or
its end). Both snapshots then see the same instant; writers wait only for that moment.
This needs the RELOAD privilege; without it the dump fails with a remedy rather than
recording counts that might not match. Counts are taken in our snapshot from then on,
in a thread beside the dump (our connection has nothing else to do meanwhile), so they
do not add to the stage's time after the tool finished.

The dump names no database (``mysqldump DB``, not ``--databases``), so it restores
into any database name. The password goes in a 0600 ``--defaults-extra-file``.

With ``binlog = true`` the tool also writes its snapshot's binlog coordinates into the
dump (``--master-data=2 --gtid``, as comments); they are read from the stream
(coordinates.py) and recorded in the manifest as where point-in-time replay starts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timezone
from pathlib import Path
from typing import BinaryIO

from backup_tasks.redaction import redact
from backup_tasks.errors import SourceError
from backup_tasks.sources.db import dsn, pipes
from backup_tasks.sources.db.beside import Beside
from backup_tasks.sources.db.version import VersionAsked
from backup_tasks.sources.mysql import binlog_server
from backup_tasks.sources.mysql.coordinates import CoordinateWatch
from backup_tasks.sources.mysql.client import (
    base_tables,
    classify,
    connect,
    count_rows,
    dump_tool,
)

log = logging.getLogger(__name__)

#: with ``binlog = true``: the tool writes its snapshot's binlog file, position and GTID
#: into the dump as comments (``=2``), where the point-in-time restore reads them back
PITR_ARGS = ("--master-data=2", "--gtid")

#: output of the dump tool that appears only after it opened its consistent snapshot
_SNAPSHOT_OPEN = (b"-- Table structure for table", b"-- Dumping events for database", b"-- Dumping routines for database",
                  b"-- Dump completed")


class _SnapshotWatch:
    """Calls ``release`` once the dump tool's output shows its snapshot is open."""

    def __init__(self, release: Callable[[], None]) -> None:
        self.release = release
        self.released = False
        self._tail = b""

    def __call__(self, chunk: bytes) -> None:
        if self.released:
            return
        window = self._tail + chunk
        if any(m in window for m in _SNAPSHOT_OPEN):
            self.done()
        self._tail = window[-64:]

    def done(self) -> None:
        if not self.released:
            self.released = True
            self.release()


def dump(target, out: BinaryIO, workdir: Path) -> dict:
    """Dump ``target``'s database to ``out``; the manifest's ``source`` section."""
    import pymysql

    bin_dir = target.options.get("bin_dir")
    server = dsn.for_target(target)
    what = f"dump of target '{target.name}'"
    pitr = bool(getattr(target, "binlog", False))  # point-in-time recovery from this dump and the shipped binlogs
    tool_path = dump_tool(bin_dir)
    tool_version = VersionAsked(tool_path, dsn.child_env(server))  # answered while we connect, not before
    try:
        conn = connect(server, what=what, ref=target.password)
    except BaseException:
        tool_version.discard()
        raise
    try:
        tool_text = tool_version.answer(check=False)
        cur = conn.cursor()
        cur.execute("SELECT VERSION(), @@log_bin, @@character_set_database, @@collation_database")
        version, log_bin, charset, collation = cur.fetchone()
        pitr_warnings: list[str] = []
        if pitr:
            found = binlog_server.settings_of(cur)
            binlog_server.require_log_bin(found, server, target.name)
            pitr_warnings = found.warnings()
            for warning in pitr_warnings:
                log.warning("target '%s': %s", target.name, warning)
        try:
            cur.execute("FLUSH TABLES WITH READ LOCK")
        except pymysql.err.MySQLError as exc:
            raise SourceError(
                f"{what} failed: FLUSH TABLES WITH READ LOCK was refused on {server.address}: {exc.args[-1]}",
                f"GRANT RELOAD ON *.* TO '{server.user}'@...; the lock is held only until the dump's snapshot is open, "
                "so that the manifest's row counts are exact",
            ) from None
        watch = _SnapshotWatch(lambda: cur.execute("UNLOCK TABLES"))
        coordinates = CoordinateWatch()
        counting: Beside[dict[str, int]] | None = None
        try:
            cur.execute("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            cur.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT")
            position = _binlog_position(cur, log_bin)
            if position is not None:
                cur.execute("SELECT UTC_TIMESTAMP(6)")
                position["at"] = cur.fetchone()[0].replace(tzinfo=timezone.utc).isoformat().replace("+00:00", "Z")
            tables = base_tables(cur, server.database)
            counting = Beside(lambda: count_rows(cur, tables), name="mysql-row-counts")
            cur.execute("SELECT TABLE_NAME FROM information_schema.VIEWS WHERE TABLE_SCHEMA = %s ORDER BY 1", (server.database,))
            views = [r[0] for r in cur.fetchall()]
            with dsn.mysql_defaults_file(server) as cnf:
                argv = [tool_path, f"--defaults-extra-file={cnf}", "--single-transaction", "--routines", "--triggers",
                        "--events", "--hex-blob", "--no-tablespaces", "--default-character-set=utf8mb4", "--quick",
                        *(PITR_ARGS if pitr else ()), server.database]

                def on_chunk(chunk: bytes) -> None:
                    if not watch.released:
                        watch(chunk)
                        if watch.released:  # the lock is gone; the connection is free for the counts
                            counting.start()
                    if pitr:  # the coordinates are only read back for point-in-time recovery
                        coordinates(chunk)

                # gather: bigger chunks for a tool that writes a few KiB at a time; its nap keeps
                # the read lock at most 2 ms longer, before the chunk that shows the snapshot open
                outcome = pipes.read_from(argv, out, env=dsn.child_env(server), what=f"{Path(tool_path).name} of target '{target.name}'",
                                          on_chunk=on_chunk, gather=True)
        finally:
            watch.done()
            if counting is not None:
                counting.wait()
        if outcome.returncode != 0:
            raise classify(outcome.stderr, server, what=what, ref=target.password)
        counts = counting.result()  # set before the tool started, as outcome was
        conn.commit()
        if pitr:
            position = _replay_start(position, coordinates.result(), target.name)
    finally:
        conn.close()
    return {
        "database": server.database,
        "server": server.address,
        "server_version": version,
        "character_set": charset,
        "collation": collation,
        "format": f"SQL ({Path(tool_path).name} --single-transaction --routines --triggers --events --hex-blob"
                  f"{' ' + ' '.join(PITR_ARGS) if pitr else ''})",
        "tables": counts,
        "views": views,
        "binlog": position,
        "warnings": (pitr_warnings + [redact(ln) for ln in outcome.stderr.splitlines() if ln.strip()])[:20],  # the tool's words, not ours
        "tool_versions": {Path(tool_path).name: tool_text, "mysql_server": version},
    }


def _replay_start(ours: dict | None, tools: dict, target: str) -> dict:
    """The dump's binlog coordinates as the tool wrote them, checked against the ones read under our lock.

    Both snapshots were opened while the global read lock held every writer, so they must
    name the same position; a difference means the row counts and the replay start would
    disagree with the data, and the backup is refused rather than recorded.
    """
    if not tools["file"] or tools["position"] is None:
        raise SourceError(f"dump of target '{target}': the dump tool wrote no binary log coordinates",
                          "use mariadb-dump or mysqldump with --master-data support (MariaDB 10.2+, MySQL 5.7+)")
    if ours and (ours.get("file"), ours.get("position")) != (tools["file"], tools["position"]):
        raise SourceError(f"dump of target '{target}': the dump tool's binlog position {tools['file']}:{tools['position']} "
                          f"differs from the one read under the read lock ({ours.get('file')}:{ours.get('position')})",
                          "run the backup again; if it repeats, report it with the server version")
    return {**(ours or {}), "file": tools["file"], "position": tools["position"],
            "gtid": tools["gtid"] if tools["gtid"] is not None else (ours or {}).get("gtid"),
            "source": "dump tool (--master-data=2 --gtid)"}


def _binlog_position(cur, log_bin) -> dict | None:
    """Where point-in-time recovery would continue from, or None without a binary log."""
    import pymysql
    from pymysql.constants import ER

    if not log_bin:
        return None
    position: dict = {}
    cur.execute("SHOW MASTER STATUS")
    row = cur.fetchone()
    if row:
        position.update(file=row[0], position=int(row[1]))
    for var in ("gtid_binlog_pos", "gtid_executed"):
        try:
            cur.execute(f"SELECT @@{var}")
            value = cur.fetchone()[0]
        except pymysql.err.OperationalError as exc:
            # MariaDB has gtid_binlog_pos, MySQL gtid_executed: the other one is an unknown
            # system variable, which is expected; a lost connection or anything else is not.
            if exc.args[0] != ER.UNKNOWN_SYSTEM_VARIABLE:
                raise
            continue
        if value:
            position["gtid"] = value
    return position or None
