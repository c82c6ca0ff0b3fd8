"""The value of a drill's health-check query, where a query that fails is an answer, not a crash.

A drill asks "is this restored database healthy?" with queries the operator wrote. A query
that raises (a missing table, a typo, a timeout) means "not healthy": the drill records
the driver's message as the check's value and goes on to clean up.
"""

from __future__ import annotations

from typing import Callable


class CheckError(str):
    """A health-check query that raised: its message, which counts as 'not true'."""


def first_value(cur, sql: str, driver_error: type[BaseException], describe: Callable[[BaseException], str]) -> object:
    """The first column of the first row of ``sql`` (None without rows), or a CheckError."""
    try:
        cur.execute(sql)
        row = cur.fetchone() if cur.description else None
    except driver_error as exc:
        return CheckError(describe(exc))
    return row[0] if row else None
