"""The cyclic garbage collector while a backupctl command starts.

Importing the CLI, SQLAlchemy, Celery and kombu makes 100,000-130,000 objects that live as
long as the process. With the default thresholds the collector runs about 150 times while
they are made, scanning objects that are never garbage: 40-50 ms of CPU in every command
that opens the catalog. ``defer`` (the script's first step) raises the youngest
generation's threshold above what start-up makes, so start-up runs no collection;
``settle`` (the command has its runtime: its imports are done) moves what start-up made
into the permanent generation, which later collections skip, and puts the thresholds
back. What is left costs a few milliseconds. A command that never builds a runtime (help,
version, a usage error) keeps the raised threshold, which still bounds the garbage it can hold.
"""

from __future__ import annotations

import gc

#: net objects allocated between two collections of the youngest generation until ``settle``: start-up makes ~130,000
STARTUP_THRESHOLD = 500_000

_saved: tuple[int, ...] | None = None


def defer() -> None:
    """Collect rarely until ``settle``; only the script calls this, never a caller of ``main`` in its own process."""
    global _saved
    if _saved is None:
        _saved = gc.get_threshold()
        gc.set_threshold(STARTUP_THRESHOLD, *_saved[1:])


def settle() -> None:
    """Start-up is over: freeze what it made and collect as usual again (nothing to do unless ``defer`` ran)."""
    global _saved
    if _saved is not None:
        gc.freeze()
        gc.set_threshold(*_saved)
        _saved = None
