"""Alert bookkeeping shared by every process: the send rate limit and the watchdog's open conditions."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import sessionmaker

from backup_tasks.records.catalog.schema import AlertConditionRow, AlertSentRow
from backup_tasks.timefmt import now as utcnow


@dataclass(frozen=True)
class AlertClaim:
    """Whether this process may send an alert now; if so, how many identical ones were held back since when.

    ``sends`` is the row's counter as this claim left it, so ``release_alert`` can undo
    exactly this claim and nothing newer.
    """

    send: bool
    suppressed: int = 0
    since: datetime | None = None
    sends: int = 0


class Alerts:
    """The catalog's alert_sends and alert_conditions tables."""

    _session: sessionmaker

    def claim_alert(self, key: str, *, kind: str, target: str | None, now: datetime, window_seconds: float) -> AlertClaim:
        """Rate limit shared by all processes: send if no identical alert went out within the window.

        A compare-and-set on ``sends`` makes exactly one of several racing processes win;
        the others count themselves as suppressed.
        """
        try:
            with self._session.begin() as s:
                row = s.get(AlertSentRow, key)
                if row is None:
                    s.add(AlertSentRow(key=key, kind=kind, target=target, last_sent_at=now, sends=1, suppressed=0))
                    return AlertClaim(True, sends=1)
                if (now - row.last_sent_at).total_seconds() < window_seconds:
                    s.execute(update(AlertSentRow).where(AlertSentRow.key == key)
                              .values(suppressed=AlertSentRow.suppressed + 1))
                    return AlertClaim(False)
                held, since, seen = row.suppressed, row.last_sent_at, row.sends
                won = s.execute(update(AlertSentRow).where(AlertSentRow.key == key, AlertSentRow.sends == seen)
                                .values(sends=seen + 1, last_sent_at=now, suppressed=0)).rowcount == 1
                return AlertClaim(won, held if won else 0, since if won else None, seen + 1 if won else 0)
        except IntegrityError:  # another process inserted the same key first: it sends
            return AlertClaim(False)

    def release_alert(self, key: str, claim: AlertClaim) -> bool:
        """Give back a claim whose alert reached no channel, so the next identical alert is sent.

        The row goes back to what it was before the claim (the previous send time, the count
        held back, plus those held back meanwhile); a row the claim created is removed.
        Nothing changes if another claim came after this one. True if released.
        """
        if not claim.send:
            return False
        with self._session.begin() as s:
            if claim.since is None:  # the claim inserted the row
                q = delete(AlertSentRow).where(AlertSentRow.key == key, AlertSentRow.sends == claim.sends)
            else:
                q = (update(AlertSentRow).where(AlertSentRow.key == key, AlertSentRow.sends == claim.sends)
                     .values(last_sent_at=claim.since, suppressed=AlertSentRow.suppressed + claim.suppressed))
            return s.execute(q).rowcount == 1

    def open_condition(self, key: str, *, kind: str, target: str | None = None, tier: str | None = None,
                       detail: dict | None = None, now: datetime | None = None) -> bool:
        """Open a watchdog condition; True only for the one caller that opened it (then it alerts)."""
        try:
            with self._session.begin() as s:
                if s.get(AlertConditionRow, key) is not None:
                    return False
                s.add(AlertConditionRow(key=key, kind=kind, target=target, tier=tier, opened_at=now or utcnow(), detail=detail))
            return True
        except IntegrityError:  # another process opened it first: that one alerts
            return False

    def mark_notified(self, key: str) -> None:
        """The opening alert of this condition reached a channel: the watchdog stops sending it."""
        with self._session.begin() as s:
            s.execute(update(AlertConditionRow).where(AlertConditionRow.key == key).values(notified=True))

    def close_condition(self, key: str) -> AlertConditionRow | None:
        """Close an open condition; returns it to the one caller that closed it (then it sends 'resolved')."""
        with self._session.begin() as s:
            row = s.get(AlertConditionRow, key)
            if row is None:
                return None
            if s.execute(delete(AlertConditionRow).where(AlertConditionRow.key == key)).rowcount != 1:
                return None
            return row

    def open_conditions(self, kind: str | None = None) -> list[AlertConditionRow]:
        q = select(AlertConditionRow).order_by(AlertConditionRow.opened_at)
        if kind:
            q = q.where(AlertConditionRow.kind == kind)
        with self._session() as s:
            return list(s.scalars(q))
