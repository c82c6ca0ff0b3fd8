"""Pure decisions, tested with plain data: what to re-read, and how often a stage reports progress."""

from __future__ import annotations

import io
from datetime import datetime, timedelta, timezone

from backup_tasks.stages.counting import CountingReader, Throttled, reading
from backup_tasks.policy.reverify import pending_verification, plan_reverify

NOW = datetime(2026, 3, 1, 4, 30, tzinfo=timezone.utc)


def test_rolling_reverification_rereads_every_backup_within_the_period():
    # 90 backups verified once, all on the same day: a daily plan spreads their re-reads out.
    backups = {f"b{i:02d}": NOW - timedelta(days=1) for i in range(90)}
    read_days: dict[str, list[int]] = {b: [] for b in backups}
    per_day = []
    for day in range(120):
        now = NOW + timedelta(days=day)
        picked = plan_reverify(backups.items(), now, days=30)
        per_day.append(len(picked))
        for b in picked:
            backups[b] = now
            read_days[b].append(day)
    for b, days in read_days.items():
        gaps = [later - earlier for earlier, later in zip([-1] + days, days)]
        assert days and max(gaps) <= 30, (b, days)
    # Spread out: the same ceil(90 / 29) = 4 reads every day, never a burst.
    assert set(per_day) == {4}


def test_overdue_backups_go_first_even_beyond_the_daily_share():
    backups = [("old1", NOW - timedelta(days=40)), ("old2", NOW - timedelta(days=29, hours=12)),
               ("fresh", NOW - timedelta(days=1))]
    assert plan_reverify(backups, NOW, days=30) == ["old1", "old2"]
    assert plan_reverify([], NOW, days=30) == []


def test_pending_verification_leaves_young_uploads_to_their_own_chain():
    uploaded = [("young", NOW - timedelta(minutes=5)), ("stuck", NOW - timedelta(hours=3)), ("odd", None)]
    assert pending_verification(uploaded, NOW, grace=timedelta(hours=1)) == ["stuck"]


def test_progress_is_throttled_but_every_stage_is_seen():
    clock = [0.0]
    seen: list[dict] = []
    report = Throttled(seen.append, backup_id="r1", target="t", interval=1.0, clock=lambda: clock[0])
    stream = reading(io.BytesIO(b"x" * 10_000), report, "compress", 10_000)
    for _ in range(10):
        stream.read(1000)
        clock[0] += 0.3
    report("upload", 0, 500)
    assert [(r["stage"], r["bytes_done"]) for r in seen] == [("compress", 0), ("compress", 5000), ("compress", 9000), ("upload", 0)]
    assert set(seen[0]) == {"backup_id", "target", "stage", "bytes_done", "bytes_total"}
    assert seen[0]["bytes_total"] == 10_000 and seen[0]["backup_id"] == "r1"


def test_a_failing_progress_sink_never_fails_the_stage():
    def broken(report):
        raise ConnectionError("redis is restarting")

    report = Throttled(broken, backup_id="r1", target="t")
    assert reading(io.BytesIO(b"data"), report, "dump", None).read() == b"data"


def test_a_rewound_reader_counts_from_where_it_is():
    counts: list[int] = []
    reader = CountingReader(io.BytesIO(b"0123456789"), counts.append)
    reader.read(6)
    reader.seek(0)  # a retried upload starts again
    reader.read(4)
    assert counts == [6, 4]
