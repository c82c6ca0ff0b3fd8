"""A point in a live cluster's WAL at which every table's row count is known exactly.

A restore drill of a physical target replays WAL to a point and compares the copy's row
counts with the source's counts *at that point*. On a busy cluster "a time" and "a
REPEATABLE READ snapshot" are not the same thing as a WAL position:

- a snapshot sees a transaction once it has left the process array, which happens
  *after* its commit record is in WAL (after the flush, and after a synchronous standby
  acknowledged it). A transaction waiting there has its commit record before any LSN
  read after the snapshot, yet the snapshot does not see it; replay to that LSN would
  include it, and the counts would differ by its rows.
- ``recovery_target_time`` stops at a commit timestamp, which is taken before the
  commit record is written; timestamps and WAL order disagree under concurrency too.

So the counted tables are first locked ``IN SHARE MODE`` by a second session, which
waits until every transaction that wrote them has ended (a writer keeps its ROW
EXCLUSIVE lock until after it has left the process array) and keeps new writers out.
With that lock held, the counting session takes its snapshot and reads the WAL insert
position L in one statement; then the lock is released. Every change to these tables
that the snapshot sees has its commit record before L, and every change it does not
see is committed after L, so the state replay reaches when it stops just before L
(``recovery_target_lsn = L``, not inclusive) is exactly the snapshot's. The counting
itself runs after the lock is gone: writers wait only for the lock and the snapshot,
not for the counts. ``lock_timeout`` bounds that wait: a long transaction writing a
table makes the drill try again rather than queue every writer behind it.
"""

from __future__ import annotations

import time

from backup_tasks.errors import SourceError
from backup_tasks.sources.db.dsn import Server
from backup_tasks.sources.postgres.client import connect, quote_ident
from backup_tasks.sources.postgres.dump import count_rows, list_tables

#: how long the SHARE locks may wait for the writers of the counted tables to finish, per try
LOCK_TIMEOUT_MS = 2000
TRIES = 5


def counted_point(server: Server, *, tries: int = TRIES, lock_timeout_ms: int = LOCK_TIMEOUT_MS) -> dict:
    """Counts of every user table of ``server.database`` and the WAL position L they hold at (see module docstring).

    Returns ``{"lsn", "at", "snapshot", "tables"}``: ``at`` is the server's clock when the
    snapshot was taken, ``tables`` maps schema.table to its row count.
    """
    import psycopg2

    what = f"taking a counted point in {server.database} on {server.address}"
    locker = connect(server, what=what)
    counter = connect(server, what=what)
    try:
        for attempt in range(1, tries + 1):
            lock_cur = locker.cursor()
            tables = list_tables(lock_cur)
            names = ", ".join(f"{quote_ident(s)}.{quote_ident(t)}" for s, t, _k in tables)
            try:
                lock_cur.execute(f"SET LOCAL lock_timeout = {int(lock_timeout_ms)}")
                if names:
                    lock_cur.execute(f"LOCK TABLE {names} IN SHARE MODE")
            except psycopg2.errors.LockNotAvailable:
                locker.rollback()
                time.sleep(min(2.0, 0.2 * attempt))
                continue
            except psycopg2.Error as exc:
                locker.rollback()
                raise SourceError(f"{what}: could not lock the tables to count them: {str(exc).strip().splitlines()[0]}",
                                  "the target's role needs to read and lock every table (e.g. pg_read_all_data "
                                  "and UPDATE, or a superuser)") from None
            counter.set_session(isolation_level="REPEATABLE READ", readonly=True)
            cur = counter.cursor()
            cur.execute("SELECT pg_current_wal_insert_lsn()::text, clock_timestamp(), pg_current_snapshot()::text")
            lsn, at, snapshot = cur.fetchone()
            locker.rollback()  # writers go on; the snapshot is taken
            counts = count_rows(cur, list_tables(cur))
            counter.rollback()
            return {"lsn": lsn, "at": at, "snapshot": snapshot, "tables": counts, "lock_tries": attempt}
        raise SourceError(f"{what}: the tables stayed locked by writers for {tries} tries of {lock_timeout_ms} ms",
                          "a long transaction writes these tables; run the drill again when it has ended")
    finally:
        locker.close()
        counter.close()


def close_segment(server: Server) -> str | None:
    """Write a record after the point, then close the current WAL segment so it is archived now.

    Replay stops just before the first record at or after the point, so one must exist
    even on an idle cluster: a transaction that takes a transaction id writes a commit
    record when it ends, which any role may do. Closing the segment (``pg_switch_wal``)
    needs a superuser or a grant; without it (None) the segment is archived after
    ``archive_timeout``.
    """
    import psycopg2

    conn = connect(server, what=f"switching WAL on {server.address}")
    try:
        conn.autocommit = True
        cur = conn.cursor()
        cur.execute("SELECT txid_current()")
        try:
            cur.execute("SELECT pg_switch_wal()::text")
            return cur.fetchone()[0]
        except psycopg2.Error:
            return None
    finally:
        conn.close()
