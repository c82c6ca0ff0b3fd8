"""How many refused anonymous calls reach the audit log: a token bucket, so a flood writes a trickle.

Every authenticated call is audited, always. A call without a valid token is refused
before anything runs, and anyone on the network can make millions of them; writing one
audit row each would let a stranger fill the catalog's disk. So the first
``API_ANONYMOUS_AUDIT_BURST`` refusals are written one by one, then one more per
``API_ANONYMOUS_AUDIT_EVERY_SECONDS``; the refusals in between are counted, and the next
row written says how many were left out (``suppressed_before``). One warning per suppressed
stretch goes to the server log.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from backup_tasks.defaults import API_ANONYMOUS_AUDIT_BURST, API_ANONYMOUS_AUDIT_EVERY_SECONDS

log = logging.getLogger("backup_tasks.api")


class AnonymousAudit:
    def __init__(self, burst: int = API_ANONYMOUS_AUDIT_BURST, every: float = API_ANONYMOUS_AUDIT_EVERY_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.burst, self.every, self.clock = burst, every, clock
        self._tokens, self._at = float(burst), clock()
        self._suppressed = 0
        self._lock = threading.Lock()

    def admit(self) -> dict | None:
        """The extra detail for the row to write for this refusal, or None when it is only counted."""
        with self._lock:
            now = self.clock()
            self._tokens = min(self.burst, self._tokens + (now - self._at) / self.every)
            self._at = now
            if self._tokens < 1:
                if self._suppressed == 0:
                    log.warning("refused anonymous API calls are arriving faster than the audit log records them; "
                                "counting the rest (the next audited one says how many)")
                self._suppressed += 1
                return None
            self._tokens -= 1
            extra = {"suppressed_before": self._suppressed} if self._suppressed else {}
            self._suppressed = 0
            return extra
