"""How long an encryption key has been current, and whether it is due for rotation: pure, with the clock passed in.

Nothing records the moment a configuration change made a recipient current, so it is
derived from what the key encrypted. The first object encrypted to a key was written
after the key became current, and nothing before it was (a re-encryption only ever
moves objects *to* the current keys), so the first use is the closest mark the records
hold. The moment ``keys generate`` or ``keys rotate`` made the key is a lower bound,
used only while nothing has been encrypted to it yet: counting from it errs towards an
early reminder, never a late one.
"""

from __future__ import annotations

from datetime import datetime, timedelta


def became_current(first_used: datetime | None, made_at: datetime | None) -> datetime | None:
    """When a current key became current: its first use, else when it was made, else unknown (None)."""
    return first_used or made_at


def age_days(since: datetime | None, now: datetime) -> float | None:
    return None if since is None else max(0.0, (now - since) / timedelta(days=1))


def due(since: datetime | None, now: datetime, max_age_days: int) -> bool:
    """Due for rotation: current for longer than ``max_age_days`` (0 never; an unknown start never)."""
    return bool(max_age_days) and since is not None and now - since > timedelta(days=max_age_days)
