"""The restorable window and WAL naming, decided from plain data (no server needed)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from backup_tasks.policy.pitr import BasePoint, Piece, base_for, window
from backup_tasks.sources.postgres import walnames

T0 = datetime(2026, 12, 5, 7, 0, tzinfo=timezone.utc)


def minutes(n: float) -> datetime:
    return T0 + timedelta(minutes=n)


def pieces(*seqs: int) -> list[Piece]:
    return [Piece(seq=s, name=f"seg{s}", closed_at=minutes(s)) for s in seqs]


def test_a_base_with_its_wal_stored_opens_the_window_up_to_the_last_contiguous_segment():
    base = BasePoint("b1", first=2, last=3, ready_at=minutes(3.5))
    win = window([base], pieces(1, 2, 3, 4, 5, 6))
    assert (win.earliest, win.latest) == (minutes(3.5), minutes(6)) and win.gaps == ()
    assert base_for(win, [base], minutes(5)) == base
    assert base_for(win, [base], minutes(3)) is None  # before the base ended: not restorable


def test_a_missing_segment_is_a_gap_and_only_a_later_base_restores_past_it():
    early, late = BasePoint("b1", 2, 2, minutes(2.5)), BasePoint("b2", 8, 8, minutes(8.5))
    win = window([early, late], pieces(2, 3, 4, 6, 7, 8, 9))
    assert [(s.start, s.end, s.base_ids) for s in win.spans] == [(minutes(2.5), minutes(4), ("b1",)),
                                                                (minutes(8.5), minutes(9), ("b2",))]
    [gap] = win.gaps
    assert (gap.after, gap.before, gap.missing) == ("seg4", "seg6", (5, 5))
    assert base_for(win, [early, late], minutes(5)) is None  # inside the gap
    assert base_for(win, [early, late], minutes(7)) is None  # after it, before the next base ended
    assert base_for(win, [early, late], minutes(9)) == late


def test_a_base_whose_own_wal_is_missing_is_not_restorable():
    base = BasePoint("b1", first=2, last=4, ready_at=minutes(4.5))
    win = window([base], pieces(2, 4, 5))
    assert win.spans == () and win.unrestorable == ("b1",) and win.earliest is None


def test_wal_names_and_positions():
    assert walnames.parse_lsn("0/3000028") == 0x3000028 and walnames.format_lsn(0x1_0000_0028) == "1/28"
    assert walnames.segment_name(1, walnames.segno_of_lsn(0x1_0300_0028)) == "000000010000000100000003"
    assert walnames.parse_segment("000000020000000100000003") == (2, 256 + 3)
    assert walnames.kind_of("00000002.history") == "history" and walnames.kind_of("000000010000000000000003.partial") == "partial"
    assert walnames.kind_of("../etc/passwd") is None


def test_recovery_reads_each_segment_from_the_timeline_begun_by_then():
    history = walnames.parse_history("1\t0/5000060\tno recovery target specified\n")
    path = walnames.timeline_path(2, history)
    assert path == [(1, 0), (2, 0x5000060)]
    assert walnames.timeline_for_segment(4, path) == 1
    assert walnames.timeline_for_segment(5, path) == 2  # the switch segment: the new timeline's copy
    assert walnames.timeline_for_segment(9, path) == 2
