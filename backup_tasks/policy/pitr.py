"""The restorable window of a point-in-time target, from plain data.

Log-family neutral: a base backup needs the log pieces numbered ``first``..``last``
(for PostgreSQL, the WAL segments from its start to its stop LSN along the timeline
recovery follows; for binlogs, the files from its recorded position), and every piece
after it extends what it can reach, up to the first missing one. A piece's
``closed_at`` is when the server handed it over, so everything in it happened before.

A span is a stretch of time a restore can reach: from the end of its oldest restorable
base to the close of the last piece before a hole. A hole after the first restorable
base is a gap: times inside it cannot be restored, and times after it only from a
base taken after it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class BasePoint:
    id: str
    first: int
    last: int
    #: the earliest time a restore from this base may stop at (the base's end)
    ready_at: datetime


@dataclass(frozen=True)
class Piece:
    seq: int
    name: str
    closed_at: datetime


@dataclass(frozen=True)
class Span:
    start: datetime
    end: datetime
    base_ids: tuple[str, ...]


@dataclass(frozen=True)
class Gap:
    #: the last piece before the hole, and the first one after it
    after: str
    before: str | None
    missing: tuple[int, int]
    since: datetime
    until: datetime | None


@dataclass(frozen=True)
class Window:
    spans: tuple[Span, ...]
    gaps: tuple[Gap, ...]
    #: bases whose own pieces are not all stored
    unrestorable: tuple[str, ...]
    newest_piece_at: datetime | None

    @property
    def earliest(self) -> datetime | None:
        return self.spans[0].start if self.spans else None

    @property
    def latest(self) -> datetime | None:
        return self.spans[-1].end if self.spans else None

    def span_at(self, when: datetime) -> Span | None:
        return next((s for s in self.spans if s.start <= when <= s.end), None)


def _runs(pieces: list[Piece]) -> list[list[Piece]]:
    runs: list[list[Piece]] = []
    for piece in sorted(pieces, key=lambda p: p.seq):
        if runs and piece.seq == runs[-1][-1].seq + 1:
            runs[-1].append(piece)
        elif not runs or piece.seq != runs[-1][-1].seq:
            runs.append([piece])
    return runs


def window(bases: list[BasePoint], pieces: list[Piece]) -> Window:
    runs = _runs(pieces)
    spans: list[Span] = []
    placed: set[str] = set()
    first_span_run = None
    for n, run in enumerate(runs):
        lo, hi = run[0].seq, run[-1].seq
        usable = sorted((b for b in bases if lo <= b.first and b.last <= hi), key=lambda b: b.ready_at)
        if not usable:
            continue
        placed.update(b.id for b in usable)
        end = max(run[-1].closed_at, usable[0].ready_at)
        spans.append(Span(start=usable[0].ready_at, end=end, base_ids=tuple(b.id for b in usable)))
        if first_span_run is None:
            first_span_run = n
    gaps = []
    if first_span_run is not None:
        for run, following in zip(runs[first_span_run:], runs[first_span_run + 1:]):
            gaps.append(Gap(after=run[-1].name, before=following[0].name, missing=(run[-1].seq + 1, following[0].seq - 1),
                            since=run[-1].closed_at, until=following[0].closed_at))
    newest = max((p.closed_at for p in pieces), default=None)
    return Window(spans=tuple(spans), gaps=tuple(gaps), unrestorable=tuple(sorted(b.id for b in bases if b.id not in placed)),
                  newest_piece_at=newest)


def base_for(win: Window, bases: list[BasePoint], when: datetime) -> BasePoint | None:
    """The newest restorable base that ended at or before ``when``, within the span holding ``when``."""
    span = win.span_at(when)
    if span is None:
        return None
    fit = [b for b in bases if b.id in span.base_ids and b.ready_at <= when]
    return max(fit, key=lambda b: b.ready_at, default=None)


def logs_to_remove(logs: list[tuple[str, int | None]], kept: list[BasePoint]) -> tuple[list[str], BasePoint | None]:
    """Log pieces (name, seq) older than the oldest kept base's first piece, and that base.

    A base and the log it needs go together: what precedes every kept base serves no
    restore. With no base kept, nothing goes: the log is all that is left.
    """
    if not kept:
        return [], None
    oldest = min(kept, key=lambda b: b.first)
    return [name for name, seq in logs if seq is not None and seq < oldest.first], oldest
