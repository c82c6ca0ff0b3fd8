"""The binlog window and restore plan as pure decisions: plain dumps and shipped logs, a fixed clock."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from backup_tasks.errors import InputError
from backup_tasks.policy.binlog_window import Base, Shipped, gaps, plan, prunable, stop_second, window

T0 = datetime(2026, 12, 5, 2, 0, tzinfo=timezone.utc)


def log(n: int, start_min: int, end_min: int) -> Shipped:
    return Shipped(f"mysql-bin.{n:06d}", n, T0 + timedelta(minutes=start_min), T0 + timedelta(minutes=end_min))


# logs 1..3 shipped, 4 and 5 purged before shipping, 6..7 shipped
SHIPPED = [log(1, 0, 1), log(2, 1, 2), log(3, 2, 3), log(6, 5, 6), log(7, 6, 7)]
NIGHTLY = Base("db-nightly", T0 + timedelta(seconds=30.5, microseconds=123), "mysql-bin.000001", 400)
AFTER_GAP = Base("db-after-gap", T0 + timedelta(minutes=6, seconds=10), "mysql-bin.000007", 900)


def test_a_purged_log_is_a_gap_that_splits_the_window_until_a_dump_after_it():
    [gap] = gaps(SHIPPED)
    assert gap.missing == ("mysql-bin.000004", "mysql-bin.000005") and gap.after == "mysql-bin.000003"
    w = window([NIGHTLY], SHIPPED)
    assert w.broken and w.earliest == NIGHTLY.at and w.latest == T0 + timedelta(minutes=3)
    w = window([NIGHTLY, AFTER_GAP], SHIPPED)
    assert w.broken and w.latest == T0 + timedelta(minutes=7)
    assert [(i.start, i.end) for i in w.intervals] == [(NIGHTLY.at, T0 + timedelta(minutes=3)), (AFTER_GAP.at, T0 + timedelta(minutes=7))]
    assert not window([NIGHTLY], SHIPPED[:3]).broken


def test_the_plan_takes_the_newest_dump_before_the_time_and_the_logs_that_reach_it():
    p = plan([NIGHTLY, AFTER_GAP], SHIPPED, T0 + timedelta(minutes=1, seconds=30, microseconds=250))
    assert p.base is NIGHTLY and p.files == ("mysql-bin.000001", "mysql-bin.000002") and p.start_position == 400
    assert p.stop_datetime == "2026-12-05 02:01:31"  # whole seconds: the rest of TIME's second is included
    assert plan([NIGHTLY], SHIPPED, T0 + timedelta(seconds=30.5)).base is NIGHTLY  # the earliest time, as pitr prints it
    p = plan([NIGHTLY, AFTER_GAP], SHIPPED, T0 + timedelta(minutes=6, seconds=40))
    assert p.base is AFTER_GAP and p.files == ("mysql-bin.000007",)


@pytest.mark.parametrize("minutes, says", [(-5, "before the earliest"), (4, "falls in a gap"), (30, "after the latest")])
def test_times_the_logs_cannot_reach_are_refused_with_the_reason(minutes, says):
    with pytest.raises(InputError, match=says):
        plan([NIGHTLY, AFTER_GAP], SHIPPED, T0 + timedelta(minutes=minutes))
    with pytest.raises(InputError, match="past a gap"):
        plan([NIGHTLY], SHIPPED, T0 + timedelta(minutes=6, seconds=30))
    with pytest.raises(InputError, match="past a gap"):  # after the gap, before the first dump taken after it
        plan([NIGHTLY, AFTER_GAP], SHIPPED, T0 + timedelta(minutes=6, seconds=5))


def test_rounding_and_retention_of_logs_before_the_oldest_kept_dump():
    assert stop_second(T0) == T0 and stop_second(T0 + timedelta(microseconds=1)) == T0 + timedelta(seconds=1)
    assert prunable(SHIPPED, [AFTER_GAP]) == ["mysql-bin.000001", "mysql-bin.000002", "mysql-bin.000003", "mysql-bin.000006"]
    assert prunable(SHIPPED, [NIGHTLY, AFTER_GAP]) == [] and prunable(SHIPPED, []) == []


def test_a_restore_time_needs_a_zone():
    from backup_tasks.ops.mysql_pitr.restore import parse_time

    assert parse_time("2026-12-05T08:00:00+01:00") == T0 + timedelta(hours=5)
    for text in ("2026-12-05 07:00", "yesterday"):
        with pytest.raises(InputError):
            parse_time(text)
