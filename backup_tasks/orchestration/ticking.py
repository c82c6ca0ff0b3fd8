"""Something a running stage must keep doing in the background: refresh its lock, record its heartbeat.

Both are a call made once when the stage starts and then every few seconds from a daemon
thread until it ends, whatever the stage itself is blocked on (a subprocess, a socket).
The call handles its own errors: a missed tick must never fail the stage.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Callable, Iterator


@contextlib.contextmanager
def ticking(every: float, tick: Callable[[], None], *, name: str) -> Iterator[None]:
    """Call ``tick`` now and every ``every`` seconds while the block runs; the thread is joined on the way out."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(every):
            tick()

    tick()
    thread = threading.Thread(target=loop, name=name, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)
