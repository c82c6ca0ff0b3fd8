"""Which live workers consume a queue, asked of the workers themselves over the broker.

A run sent to ``host.db01`` waits forever if no worker subscribes to that queue: Redis
keeps the message and says nothing. ``wait`` asks this after a few seconds so that a
person waiting learns why (client.py), using Celery's broadcast ``active_queues``,
which every running worker answers.
"""

from __future__ import annotations

import logging

from backup_tasks.orchestration.celery_app import app

log = logging.getLogger(__name__)


def consumers(queue: str, timeout: float = 1.0) -> list[str] | None:
    """Names of the workers that answered and consume ``queue``; None when the broker could not be asked."""
    try:
        replies = app.control.inspect(timeout=timeout).active_queues() or {}
    except Exception:  # noqa: BLE001 - a hint for people; the wait itself goes on whatever happens here
        log.debug("could not ask the workers which queues they consume", exc_info=True)
        return None
    return sorted(worker for worker, queues in replies.items() if any(q.get("name") == queue for q in queues or ()))
