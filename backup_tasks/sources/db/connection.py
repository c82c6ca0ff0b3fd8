"""Opening a database connection, and naming what went wrong in words an operator can act on.

A driver's error text and a client tool's stderr say the same things in each engine's own
words ("password authentication failed" vs "1045 Access denied"). Each engine keeps its
own table of ``Rule`` rows; reading the text, blotting out the password, picking the
first rule that matches and logging a retried outage are the same everywhere and live here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

from backup_tasks.errors import ServiceUnavailable, SourceError
from backup_tasks.sources.db import pipes
from backup_tasks.sources.db.dsn import Server

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Rule:
    """One row of an engine's message table.

    It matches when the lower-cased text holds every string of ``all_of`` and, if
    ``any_of`` is given, at least one of those. ``message`` and ``remedy`` are format
    strings over ``what``, ``where`` (host:port), ``host``, ``user``, ``database``,
    ``ref`` (the password reference) and ``text`` (the end of the client's message).
    """

    message: str
    remedy: str
    any_of: tuple[str, ...] = ()
    all_of: tuple[str, ...] = ()
    #: SourceError (permanent) or ServiceUnavailable (the task layer retries it)
    error: type[Exception] = SourceError

    def matches(self, low: str) -> bool:
        return all(s in low for s in self.all_of) and (not self.any_of or any(s in low for s in self.any_of))


def classify(message: str, server: Server, rules: tuple[Rule, ...], *, fallback_remedy: str, what: str,
             ref: str | None = None) -> Exception:
    """The typed error for a client's ``message``: the first matching rule, else a SourceError quoting it."""
    text = pipes.last_lines(message, 3, secret=server.password)
    low = text.lower()
    fields = {"what": what, "where": server.address, "host": server.host, "user": server.user,
              "database": server.database, "ref": ref or "the password reference", "text": text}
    for rule in rules:
        if rule.matches(low):
            return rule.error(rule.message.format(**fields), rule.remedy.format(**fields))
    return SourceError(f"{what} failed on {server.address}: {text}", fallback_remedy)


def connect(open_connection: Callable[[], object], driver_error: type[BaseException],
            classify_error: Callable[[str], Exception]):
    """``open_connection()``, or the typed error ``classify_error`` makes of the driver's message.

    The driver's own exception is dropped (``from None``): its text may hold the DSN,
    and the typed error already carries what it said, minus the password.
    """
    try:
        return open_connection()
    except driver_error as exc:
        err = classify_error(str(exc))
        if isinstance(err, ServiceUnavailable):
            log.warning("%s", err)  # one line per attempt: the task layer retries this with backoff
        raise err from None
