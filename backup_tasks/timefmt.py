"""The one textual form of a time: UTC, millisecond precision, a trailing ``Z``.

Manifests, JSON answers, retention plans and alerts all print times this way, so the
same instant reads the same everywhere and sorts as text. Durations written in the
targets file (``keep_within = "7d"``) are read here too, so the config loader refuses a
bad one with the same rule retention later applies.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

_DURATION_PART = re.compile(r"(\d+)\s*([wdhm])")
_DURATION_UNITS = {"w": timedelta(weeks=1), "d": timedelta(days=1), "h": timedelta(hours=1), "m": timedelta(minutes=1)}


def now() -> datetime:
    """The current instant as an aware UTC datetime, so it compares with the times this module parses."""
    return datetime.now(timezone.utc)


def iso(ts: datetime | None) -> str | None:
    """``2026-01-31T02:00:00.000Z`` for an aware datetime (None stays None, for optional fields)."""
    return ts.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z") if ts else None


def parse(text: str | None) -> datetime | None:
    """The aware datetime of an ISO 8601 text; a trailing ``Z`` means UTC (None or empty stays None)."""
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def parse_duration(value) -> timedelta:
    """``7`` (days), ``"7d"``, ``"12h"``, ``"2w"``, ``"1d12h"``; ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"invalid duration {value!r}")
    if isinstance(value, (int, float)):
        if value <= 0:
            raise ValueError(f"invalid duration {value!r}")
        return timedelta(days=value)
    text = str(value).strip().lower()
    parts = _DURATION_PART.findall(text)
    if not parts or _DURATION_PART.sub("", text).strip():
        raise ValueError(f"invalid duration {value!r}: use e.g. '7d', '12h', '2w'")
    return sum((int(n) * _DURATION_UNITS[u] for n, u in parts), timedelta())
