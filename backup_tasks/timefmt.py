"""The one textual form of a time: UTC, millisecond precision, a trailing ``Z``.

Manifests, JSON answers, retention plans and alerts all print times this way, so the
same instant reads the same everywhere and sorts as text.
"""

from __future__ import annotations

from datetime import datetime, timezone


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
