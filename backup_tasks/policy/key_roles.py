"""Which encryption keys are current, still needed, or retired: a pure decision from plain counts.

A key is retired only when nothing stored depends on it: deleting the identity of a key
that one backup still needs makes that backup unreadable forever, so "old" and "retired"
are decided from what is stored, never from a key's age.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum


class Role(StrEnum):
    CURRENT = "current"  # new backups are encrypted to it
    OLD = "old"  # not current, but stored objects still depend on it: keep its identity
    RETIRED = "retired"  # not current and nothing depends on it: its identity may be deleted
    NEW = "new"  # made by a rotation and not yet made current: about to be used, keep it


@dataclass
class Usage:
    """What depends on one key id: backups, archived log files (per family), and stored objects per tier.

    ``objects`` counts every stored object per tier, log files included: each one is
    unreadable without the key, whatever it belongs to.
    """

    backups: int = 0
    objects: dict[str, int] = field(default_factory=dict)
    backups_per_tier: dict[str, int] = field(default_factory=dict)
    #: family ("wal", "binlog") → stored log files, and the same per tier
    logs: dict[str, int] = field(default_factory=dict)
    logs_per_tier: dict[str, dict[str, int]] = field(default_factory=dict)
    first_used: datetime | None = None

    @property
    def in_use(self) -> bool:
        return bool(self.backups or any(self.logs.values()) or any(self.objects.values()))


@dataclass(frozen=True)
class KeyRole:
    key_id: str
    role: Role
    usage: Usage

    @property
    def deletable(self) -> bool:
        return self.role == Role.RETIRED


def decide(current: list[str], usage: dict[str, Usage], known: list[str], fresh: list[str] = ()) -> list[KeyRole]:
    """Each key id's role: the current ones first, then the rest by when they were first used.

    ``known`` are other key ids this system holds or held (identities on this host, keys
    that were current before a rotation); ``fresh`` are keys a rotation made that were
    never current. A key nothing depends on is retired, unless it is fresh: a rotation's
    new key waits, unused, until the configuration makes it current.
    """
    ids = list(dict.fromkeys([*current, *usage, *known, *fresh]))
    out = []
    for kid in ids:
        used = usage.get(kid, Usage())
        if kid in current:
            role = Role.CURRENT
        elif used.in_use:
            role = Role.OLD
        else:
            role = Role.NEW if kid in fresh else Role.RETIRED
        out.append(KeyRole(kid, role, used))
    order = {Role.CURRENT: 0, Role.NEW: 1, Role.OLD: 2, Role.RETIRED: 3}
    return sorted(out, key=lambda k: (order[k.role], k.usage.first_used is None, k.usage.first_used or datetime.min, k.key_id))
