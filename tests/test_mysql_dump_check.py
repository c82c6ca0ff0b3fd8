"""Runbook: what verify reads in a real mariadb-dump, whatever the chunks it arrives in.

Dump a database whose tables have awkward names and a row far longer than a read chunk
with the real mariadb-dump, then run the MySQL source's check on that stream cut at odd
places: it must find every table, and refuse the same dump truncated or missing a table.
"""

from __future__ import annotations

import io
import subprocess

import pytest

from backup_tasks.errors import VerificationFailed
from backup_tasks.sources.mysql.source import MySQLSource
from databases import my, my_names  # noqa: F401

TABLES = ["a_long_rows", "b_after", "we`ird", "z_last"]


class Trickle(io.RawIOBase):
    """A file that hands out at most ``step`` bytes a read, as a pipe or a decompressor may."""

    def __init__(self, data: bytes, step: int) -> None:
        self._data, self._at, self._step = data, 0, step

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        n = self._step if n is None or n < 0 else min(n, self._step)
        out = self._data[self._at:self._at + n]
        self._at += len(out)
        return out


@pytest.fixture
def dumped(my_names, tmp_path) -> bytes:
    db = my_names("bt_mycheck")
    with my() as cur:
        cur.execute(f"CREATE DATABASE `{db}`")
        cur.execute(f"USE `{db}`")
        cur.execute("CREATE TABLE a_long_rows (id INT PRIMARY KEY, payload LONGBLOB)")
        cur.execute("INSERT INTO a_long_rows VALUES (1, REPEAT('x', 3 * 1024 * 1024))")  # one 6 MiB line with --hex-blob
        cur.execute("CREATE TABLE b_after (id INT)")
        cur.execute("CREATE TABLE `we``ird` (id INT)")
        cur.execute("CREATE TABLE z_last (id INT)")
    out = subprocess.run(["mariadb-dump", "-h", "127.0.0.1", "-P", "3306", "-u", "root", "--single-transaction", "--hex-blob", db],
                         capture_output=True, check=True).stdout
    assert max(len(line) for line in out.split(b"\n")) > 6 << 20
    return out


def manifest() -> dict:
    return {"backup_id": "check-test", "source": {"tables": {t: 0 for t in TABLES}}}


@pytest.mark.parametrize("step", [1 << 20, 65536, 4099, 17])
def test_check_finds_every_table_wherever_the_chunks_end(dumped, tmp_path, step):
    if step == 17:
        dumped = dumped[:200_000] + dumped[-200_000:]  # the head and the tail, byte-trickled in seconds, not minutes
    assert MySQLSource().check(Trickle(dumped, step), manifest(), tmp_path) == {"tables_checked": 4, "statements": "complete"}


def test_check_refuses_a_truncated_dump_and_one_missing_a_table(dumped, tmp_path):
    with pytest.raises(VerificationFailed) as cut:
        MySQLSource().check(io.BytesIO(dumped[:len(dumped) // 2]), manifest(), tmp_path)
    assert cut.value.check == "mysql-trailer"
    without = dumped.replace(b"\nCREATE TABLE `b_after`", b"\nCREATE TABLE `b_other`")
    with pytest.raises(VerificationFailed) as missing:
        MySQLSource().check(Trickle(without, 4099), manifest(), tmp_path)
    assert missing.value.check == "mysql-tables" and "b_after" in missing.value.message
