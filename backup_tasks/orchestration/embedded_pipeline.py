"""The embedded default's chain, with its stages overlapping in threads of one process.

Without a broker the chain's tasks run eagerly in the calling process. Run one after
another, each stage would wait for the whole file of the one before it; here each stage
runs in a thread of its own, started when the stage before it calls ``forward`` (its
output has started), and follows that output as a distributed worker's stage does
(ops/following.py). A stage that does not forward (upload: verify must read the
committed object) is followed by the next one in the same thread, once it returned.

The tasks themselves are unchanged: the same ``apply`` as before, the same failure
callback, the same eager retries (a retried stage forwards again, and the follower of its
previous attempt stops quietly). The zstd and age work, the hashing and the file I/O
release the GIL, so the threads overlap where the time goes.
"""

from __future__ import annotations

import contextvars
import threading
from typing import Callable

from celery import states

#: in a stage running inside the embedded pipeline: ``forward(ref)`` starts the next stage now
_forward: contextvars.ContextVar[Callable[[dict], None] | None] = contextvars.ContextVar("embedded_forward", default=None)


def forwarder() -> Callable[[dict], None] | None:
    """The embedded pipeline's ``forward`` for the stage running in this thread (None outside the pipeline)."""
    return _forward.get()


class Pipeline:
    """Run the chain's signatures (in order), overlapping those that forward; ``run`` returns the last one's result."""

    def __init__(self, signatures: list) -> None:
        self.signatures = signatures
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._forwarded: set[tuple[int, int]] = set()  # (stage index, thread generation) that forwarded
        self.error: BaseException | None = None
        self.result = None

    def run(self, ref: dict):
        self._spawn(0, ref)
        while True:
            with self._lock:
                alive = [t for t in self._threads if t.is_alive()]
            if not alive:
                break
            for thread in alive:
                thread.join()
        return self.result

    def _spawn(self, index: int, ref: dict) -> None:
        thread = threading.Thread(target=contextvars.copy_context().run, args=(self._stage, index, ref),
                                  name=f"embedded-stage-{index}", daemon=True)
        with self._lock:
            self._threads.append(thread)
        thread.start()

    def _stage(self, index: int, ref: dict) -> None:
        while index < len(self.signatures):
            forwarded = threading.Event()

            def forward(next_ref: dict, _at: int = index) -> None:
                forwarded.set()
                self._spawn(_at + 1, next_ref)

            _forward.set(forward if index + 1 < len(self.signatures) else None)
            outcome = self.signatures[index].clone().apply(args=(ref,))
            if outcome.state == states.FAILURE:
                with self._lock:
                    self.error = self.error or outcome.result
                return
            if outcome.state != states.SUCCESS or forwarded.is_set():
                return  # ignored (its producer was replaced, or it was a copy), or its follower carries on
            ref = outcome.result
            if index == len(self.signatures) - 1:
                self.result = ref
            index += 1
