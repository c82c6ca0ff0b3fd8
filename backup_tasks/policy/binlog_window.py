"""The restorable window of a binlog target, and the plan for one point-in-time restore: pure.

A dump taken with binlog coordinates is a base: from its snapshot (file ``s``, position
``p``, time ``at``) the shipped logs ``s, s+1, …, k`` replay it forward, as long as no
number is missing. So each base restores to any time from its snapshot to the last
event of the unbroken run of shipped logs starting at its file. A missing number (a log
purged on the server before it was shipped) is a gap: times after it are restorable only
from a base taken after it.

Binary log event times have whole seconds. A restore to TIME stops before the first
event at or after TIME rounded up to the next whole second, so every transaction
committed at or before TIME is applied, and so is the rest of that second.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from backup_tasks.errors import InputError
from backup_tasks.timefmt import iso as iso_utc


@dataclass(frozen=True)
class Base:
    """A dump usable as the start of a replay."""

    backup_id: str
    at: datetime
    file: str
    position: int


@dataclass(frozen=True)
class Shipped:
    name: str
    seq: int
    first_at: datetime
    last_at: datetime


@dataclass(frozen=True)
class Gap:
    after: str
    before: str
    missing: tuple[str, ...]
    start: datetime
    end: datetime

    def as_dict(self) -> dict:
        return {"after": self.after, "before": self.before, "missing": list(self.missing), "from": iso_utc(self.start),
                "to": iso_utc(self.end)}


@dataclass(frozen=True)
class Interval:
    start: datetime
    end: datetime
    backup_id: str


@dataclass(frozen=True)
class Window:
    intervals: tuple[Interval, ...]
    gaps: tuple[Gap, ...]
    #: a gap lies between the oldest base and the newest shipped log: some times in between are not restorable
    broken: bool
    newest_shipped: datetime | None = None

    @property
    def earliest(self) -> datetime | None:
        return min((i.start for i in self.intervals), default=None)

    @property
    def latest(self) -> datetime | None:
        return max((i.end for i in self.intervals), default=None)

    def as_dict(self, now: datetime) -> dict:
        merged = merge(self.intervals)
        return {
            "earliest": iso_utc(self.earliest) if self.earliest else None,
            "latest": iso_utc(self.latest) if self.latest else None,
            "intervals": [{"from": iso_utc(a), "to": iso_utc(b)} for a, b in merged],
            "gaps": [g.as_dict() for g in self.gaps],
            "broken": self.broken,
            "lag_seconds": lag_seconds(self.newest_shipped, now),
        }


@dataclass(frozen=True)
class Plan:
    base: Base
    files: tuple[str, ...]
    start_position: int
    stop_datetime: str | None
    notes: tuple[str, ...] = field(default_factory=tuple)
    #: a drill stops at the exact position of its snapshot instead of a time
    stop_position: int | None = None


def seq_of(name: str) -> tuple[str, int]:
    """(basename, number) of a binlog file name: ``mysql-bin.000042`` gives ``("mysql-bin", 42)``."""
    stem, _, number = name.rpartition(".")
    if not stem or not number.isdigit():
        raise ValueError(f"'{name}' is not a binary log file name (BASENAME.NUMBER)")
    return stem, int(number)


def gaps(shipped: list[Shipped]) -> list[Gap]:
    """Missing numbers between consecutive shipped logs."""
    out = []
    ordered = sorted(shipped, key=lambda s: s.seq)
    for a, b in zip(ordered, ordered[1:]):
        if b.seq > a.seq + 1:
            stem = seq_of(a.name)[0]
            width = len(a.name.rpartition(".")[2])
            missing = tuple(f"{stem}.{n:0{width}d}" for n in range(a.seq + 1, b.seq))
            out.append(Gap(a.name, b.name, missing, a.last_at, b.first_at))
    return out


def _run_from(seq: int, by_seq: dict[int, Shipped]) -> list[Shipped]:
    run = []
    while seq in by_seq:
        run.append(by_seq[seq])
        seq += 1
    return run


def window(bases: list[Base], shipped: list[Shipped]) -> Window:
    """Every base's restorable interval, the gaps, and whether a gap breaks the window."""
    by_seq = {s.seq: s for s in shipped}
    intervals = []
    for base in bases:
        run = _run_from(seq_of(base.file)[1], by_seq)
        end = max((s.last_at for s in run), default=base.at)
        intervals.append(Interval(base.at, max(end, base.at), base.backup_id))
    found = gaps(shipped)
    oldest = min((seq_of(b.file)[1] for b in bases), default=None)
    broken = oldest is not None and any(int(seq_of(g.before)[1]) > oldest for g in found)
    newest = max((s.last_at for s in shipped), default=None)
    return Window(tuple(sorted(intervals, key=lambda i: i.start)), tuple(found), broken, newest)


def merge(intervals) -> list[tuple[datetime, datetime]]:
    out: list[list[datetime]] = []
    for i in sorted(intervals, key=lambda i: i.start):
        if out and i.start <= out[-1][1]:
            out[-1][1] = max(out[-1][1], i.end)
        else:
            out.append([i.start, i.end])
    return [(a, b) for a, b in out]


def shown(at: datetime) -> datetime:
    """A time as printed (milliseconds, truncated), so that a time copied from the output is taken as meant."""
    return at.replace(microsecond=at.microsecond // 1000 * 1000)


def stop_second(at: datetime) -> datetime:
    """TIME rounded up to a whole second (see the module docstring)."""
    whole = at.replace(microsecond=0)
    return whole if whole == at else whole + timedelta(seconds=1)


def plan(bases: list[Base], shipped: list[Shipped], at: datetime) -> Plan:
    """The newest base at or before ``at`` and the shipped logs that reach ``at``; InputError if none can."""
    at = at.astimezone(timezone.utc)
    stop = stop_second(at)
    w = window(bases, shipped)
    by_seq = {s.seq: s for s in shipped}
    for base in sorted(bases, key=lambda b: b.at, reverse=True):
        if shown(base.at) > at:  # the earliest time as shown (milliseconds) is accepted as the earliest
            continue
        run = _run_from(seq_of(base.file)[1], by_seq)
        needed = []
        for s in run:
            needed.append(s)
            if s.last_at >= stop:
                break
        else:
            if at != base.at:
                continue  # the shipped logs end before TIME: an older base will not reach it either
        stamp = stop.strftime("%Y-%m-%d %H:%M:%S")
        return Plan(base, tuple(s.name for s in needed), base.position, stamp)
    raise InputError(_why_not(w, at), "choose a time inside the window that backupctl pitr TARGET shows")


def plan_to_position(bases: list[Base], shipped: list[Shipped], file: str, position: int) -> Plan:
    """The newest base at or before ``file:position`` and the shipped logs from it through ``file``; InputError if unshipped."""
    seq = seq_of(file)[1]
    by_seq = {s.seq: s for s in shipped}
    for base in sorted(bases, key=lambda b: (seq_of(b.file)[1], b.position), reverse=True):
        start = seq_of(base.file)[1]
        if (start, base.position) > (seq, position):
            continue
        run = [s for s in _run_from(start, by_seq) if s.seq <= seq]
        if run and run[-1].seq == seq:
            return Plan(base, tuple(s.name for s in run), base.position, None, stop_position=position)
    raise InputError(f"{file}:{position} cannot be reached from a verified dump through shipped binary logs",
                     "ship the binary logs (backupctl pitr TARGET --ship) and check for gaps")


def _why_not(w: Window, at: datetime) -> str:
    when = iso_utc(at)
    if w.earliest is None:
        return f"{when} is not restorable: there is no dump with binlog coordinates yet"
    if at < shown(w.earliest):
        return f"{when} is before the earliest restorable time {iso_utc(w.earliest)}"
    for g in w.gaps:
        if g.start <= at <= g.end:
            return (f"{when} falls in a gap of the shipped binary logs: {', '.join(g.missing)} "
                    f"(between {iso_utc(g.start)} and {iso_utc(g.end)}) were never shipped")
    # past a gap: the gap is where the window stops, or TIME is between a gap and the first dump after it
    past = [g for g in w.gaps if (g.start >= w.latest if at > w.latest else g.end < at)]
    if past:
        g = past[0] if at > w.latest else past[-1]
        return (f"{when} lies past a gap of the shipped binary logs ({', '.join(g.missing)} were never shipped) "
                f"and no dump was taken after the gap and before it; the latest restorable time is {iso_utc(w.latest)}")
    if at > w.latest:
        return f"{when} is after the latest restorable time {iso_utc(w.latest)} (the newest shipped binary log ends there)"
    return f"{when} is not covered by any dump and the binary logs shipped after it"


def prunable(shipped: list[Shipped], kept: list[Base]) -> list[str]:
    """Shipped logs no kept dump can replay: numbered below the oldest kept dump's coordinates.

    Without a kept dump that has coordinates nothing is prunable: there is no window to
    measure against, and a log is worth more than the space it takes.
    """
    if not kept:
        return []
    cutoff = min(seq_of(b.file)[1] for b in kept)
    return [s.name for s in sorted(shipped, key=lambda s: s.seq) if s.seq < cutoff]


def lag_seconds(newest: datetime | None, now: datetime) -> float | None:
    """How far the restorable end trails now; None before anything was shipped."""
    return None if newest is None else max(0.0, (now - newest).total_seconds())


def lag_breached(newest: datetime | None, now: datetime, rpo_minutes: float) -> bool:
    lag = lag_seconds(newest, now)
    return lag is None or lag > rpo_minutes * 60


