"""A call run in a thread beside a dump tool, its result or error handed back to the dump's thread.

Both database dumps count every table's rows in the dump's own snapshot, on a connection
that has nothing else to do while the tool writes. Counting beside the tool, not after
it, keeps the counts off the stage's time; the connection is never closed under a query,
because ``wait`` is called however the dump ended.
"""

from __future__ import annotations

import threading
from typing import Callable, Generic, TypeVar

T = TypeVar("T")


class Beside(Generic[T]):
    """``call`` in a thread from ``start``; ``result`` gives its value or raises its error (or runs it now if never started)."""

    def __init__(self, call: Callable[[], T], *, name: str) -> None:
        self._call, self._name = call, name
        self._thread: threading.Thread | None = None
        self._value: T | None = None
        self._error: BaseException | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._value = self._call()
        except BaseException as exc:  # noqa: BLE001 - handed to the dump's thread by result()
            self._error = exc

    def wait(self) -> None:
        """Wait for the call however the dump ended."""
        if self._thread is not None:
            self._thread.join()

    def result(self) -> T:
        if self._thread is None:  # never started (e.g. the tool never showed its snapshot open): run it now
            return self._call()
        self.wait()
        if self._error is not None:
            raise self._error
        return self._value
