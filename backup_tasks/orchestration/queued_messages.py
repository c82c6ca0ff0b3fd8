"""Whether the broker still holds a message for a run: queued, or delivered to a worker and unacknowledged.

Between two stages a run has no process: its next stage is a message in its host's
queue (or the ``verify`` queue), and it may wait there for hours behind other targets'
chains on a busy host, so the age of its last heartbeat proves nothing. What tells a
waiting run from one whose message is gone (a Redis without persistence restarted, or
someone deleted the message) is the broker itself: kombu keeps a Redis queue as a list
named after the queue (one list per priority step), and a message a worker took but
has not acknowledged (running, prefetched, or held for a countdown) in the ``unacked``
hash until it is acknowledged or the visibility timeout restores it to its queue.

A message belongs to the run when its headers name the run as the task or the root of
its chain (the start task's id is the run id) or its arguments carry the run's
reference or id. The queue is read before ``unacked``, and twice a moment apart, so a
message moving from one to the other while it is read is not missed.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from typing import Callable

from backup_tasks.errors import InputError
from backup_tasks.orchestration import routing

log = logging.getLogger(__name__)

#: ``has_message(target, run_id)``, for ops/abandoned.py
HasMessage = Callable[[str, str], bool]

#: read a queue in slices, so a long queue never sits in memory whole
SLICE = 500
#: between the two reads of the broker: kombu moves a delivered message from its queue to ``unacked`` within this
SECOND_LOOK_SECONDS = 1.0


def finder(rt) -> HasMessage | None:
    """The check for ``rt``'s broker; None when there is no queue to look in (the embedded default) or it is
    not a Redis this module can read (RabbitMQ, Sentinel): then waiting runs are never judged."""
    url = rt.settings.broker_url or ""
    if rt.settings.embedded or not url.startswith(("redis://", "rediss://")):
        return None

    def has_message(target: str, run_id: str) -> bool:
        try:
            queues = [rt.target(target).queue, routing.VERIFY_QUEUE]
        except InputError:
            return True  # no longer in the targets file: its queue is unknown, so nothing proves the message gone
        import redis  # a process with a broker has it; the embedded default never loads redis

        db = redis.Redis.from_url(url, socket_timeout=30, socket_connect_timeout=5)
        try:
            if _held(db, queues, run_id):
                return True
            time.sleep(SECOND_LOOK_SECONDS)
            return _held(db, queues, run_id)
        finally:
            db.close()

    return has_message


def _held(db, queues: list[str], run_id: str) -> bool:
    from kombu.transport.redis import Channel  # loads redis: only with a Redis broker

    for queue in queues:
        for step in Channel.priority_steps:
            key = f"{queue}{Channel.sep}{step}" if step else queue
            start = 0
            while True:
                chunk = db.lrange(key, start, start + SLICE - 1)
                if any(_for_run(json.loads(raw), run_id) for raw in chunk):
                    return True
                if len(chunk) < SLICE:
                    break
                start += SLICE
    for _, raw in db.hscan_iter(Channel.unacked_key, count=SLICE):
        entry = json.loads(raw)  # [message, exchange, routing key]
        if entry and _for_run(entry[0], run_id):
            return True
    return False


def _for_run(message: dict, run_id: str) -> bool:
    headers = message.get("headers") or {}
    if run_id in (headers.get("id"), headers.get("root_id")):
        return True
    try:
        body = message.get("body", "")
        if (message.get("properties") or {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]
    except (ValueError, TypeError, IndexError, KeyError):
        log.debug("a message in the broker has a body this check cannot read", exc_info=True)
        return False
    return any(arg == run_id or (isinstance(arg, dict) and arg.get("backup_id") == run_id) for arg in args)
