"""The Redis broker transport, with channels that can still reach Redis after their connection was torn down.

Why it exists: with kombu's own Redis transport, a worker exits ("Unrecoverable error:
AttributeError: 'NoneType' object has no attribute 'hostname'") when Redis restarts
while it both runs a stage and waits for its next message. That is any worker with a
free pool slot (``-c 2`` and up) during a backup, so a broker restart would stop every
busy backup host. The sequence, inside kombu and Celery:

1. Redis goes away; the consumer's channel is blocked in BRPOP on the free slot's behalf.
2. Celery's consumer collects the broken connection. Closing the channel first tries to
   finish the pending BRPOP read, which fails, so that close stops half way; the
   connection then forgets its parameters (``transport.client = None``).
3. Celery closes the connection once more. This time the channel does close, and as
   its last act puts the running stage's unacknowledged message back in the queue,
   through a new connection pool built from ``transport.client``, which is now None.
   The AttributeError is no connection error, so Celery treats it as a bug and exits.

The same missing parameters would break the acknowledgement the stage sends when it
finishes on the old channel. An idle worker (nothing unacknowledged) or one whose every
slot is busy (no BRPOP pending) is not hit, which is why a one-process worker rides out
the restart.

The work-around: a channel remembers the connection parameters it built its pools from
while its connection was alive, and builds any later pool from them. Putting a message
back or acknowledging it after the teardown then reaches Redis as before, or fails with
a Redis connection error, which kombu and Celery already handle.

A second gap, same moment: Celery drops each message it received but had not yet
handed to a pool process (a stage another stage sent a few milliseconds before Redis
went: the dump's compress, the compress's encrypt), counting on the broker to deliver it
again. Redis does only if the closing channel's restore reaches it; while Redis is down
it cannot, and the message waited in Redis's ``unacked`` hash for the visibility timeout
(hours), its run ``running`` meanwhile with nothing in any log, and never reaped, since
its message looked held. The same when Redis goes between handing a message out and
recording it in ``unacked``: the record may or may not be there, the worker never saw the
message. So a restore, or a record, that fails for want of Redis is remembered, and the
process's next channel, once Redis answers, puts those messages back in their queues,
but for the tasks the worker is still running, which acknowledge their own when they end.
Not covered, if Redis can do it: a message popped whose reply Redis never sent before exiting.

``install()`` (run when celery_app is imported: workers, beat, Flower, clients) makes the
``redis://`` and ``rediss://`` schemes resolve to this transport (redis_channel.py), by
name: kombu imports it, and the redis client with it, only when a Redis connection is
made, so a process that never talks to Redis (PostgreSQL's archive_command running
``backupctl wal push``) needs neither. It is a subclass that
changes only the above, so URLs, logs and Flower's broker view still say ``redis://``,
which selecting it through Celery's ``broker_transport`` setting would not.
"""

from __future__ import annotations

from kombu import transport as registry

#: kombu's Redis transport, which ours extends, and ours
KOMBU_TRANSPORT = "kombu.transport.redis:Transport"
TRANSPORT = "backup_tasks.orchestration.redis_channel:Transport"
SCHEMES = ("redis", "rediss")


def install() -> None:
    """Resolve the Redis URL schemes to ``redis_channel.Transport`` in this process (idempotent).

    A scheme that someone already pointed elsewhere is left alone.
    """
    for scheme in SCHEMES:
        if registry.TRANSPORT_ALIASES.get(scheme) in (KOMBU_TRANSPORT, TRANSPORT):
            registry.TRANSPORT_ALIASES[scheme] = TRANSPORT
            # kombu caches each scheme's class once resolved; a connection made before this
            # import (none, normally) must not keep the old one for later connections
            registry._transport_cache.pop(scheme, None)
