"""kombu's Redis transport with channels that remember their connection parameters, and that
finish, once Redis is back, the restore of unacknowledged messages a broker restart interrupted.

broker_transport.py says why (a worker with a free slot would exit when Redis restarts
mid-stage, and a message it had received but not started would wait hours) and installs
this transport for the ``redis://`` and ``rediss://`` schemes.
"""

from __future__ import annotations

import logging
import threading

from celery.worker.state import active_requests
from kombu.transport import redis as kombu_redis
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import dumps, loads
from redis.exceptions import ConnectionError as RedisConnectionError

log = logging.getLogger(__name__)

#: messages a channel of this process could not leave safely in Redis, by delivery tag: each in Redis's
#: ``unacked`` hash to be put back in its queue, or (its entry given) maybe nowhere in Redis any more
_unrestored: dict[str, str | None] = {}
_unrestored_lock = threading.Lock()


class QoS(kombu_redis.QoS):
    """kombu's Redis QoS, but what Redis being away keeps it from recording or restoring is remembered."""

    def append(self, message, delivery_tag):
        """Record a message just delivered as unacknowledged; if Redis went meanwhile, remember the message.

        Redis popped it from its queue and Celery never sees it: whether the record reached
        Redis before it went is unknown, so the message itself is kept, to be queued again.
        """
        try:
            return super().append(message, delivery_tag)
        except self.channel.connection_errors:
            delivery = message.delivery_info
            with _unrestored_lock:
                _unrestored[delivery_tag] = dumps([message._raw, delivery["exchange"], delivery["routing_key"]])
            log.warning("Redis went away as a message was delivered; it will be queued again once Redis is back")
            raise

    def restore_unacked(self, client=None):
        try:
            return super().restore_unacked(client)
        except self.channel.connection_errors:
            with _unrestored_lock:
                # Some may have been restored before Redis went: restoring a tag twice finds
                # nothing the second time, so all are kept.
                _unrestored.update(dict.fromkeys(self._delivered))
            log.warning("could not put %d unacknowledged message(s) back in their queues, Redis is away; "
                        "they will be once it is back", len(self._delivered))
            raise

    def restore_interrupted(self, tag: str, entry: str | None) -> None:
        """Queue the message of ``tag`` again: as ``unacked`` records it, or else from ``entry`` if given (one transaction)."""

        def transaction(pipe):
            recorded = pipe.hget(self.unacked_key, tag)
            pipe.multi()
            self._remove_from_indices(tag, pipe)
            if recorded or entry:
                payload, exchange, routing_key = loads(bytes_to_str(recorded or entry))
                self.channel._do_restore_message(payload, exchange, routing_key, pipe)

        with self.channel.conn_or_acquire() as client:
            client.transaction(transaction, self.unacked_key)


class Channel(kombu_redis.Channel):
    """kombu's Redis channel, but its connection parameters outlive the connection object."""

    QoS = QoS

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)  # has reached Redis (a PING), or raised
        self._restore_interrupted()

    def _restore_interrupted(self) -> None:
        """Put back in their queues the messages an earlier channel of this process could not leave safely.

        Celery drops, on losing the broker, every message it received but had not yet
        handed to a pool process, counting on the broker to deliver it again; Redis does
        so only when the channel's restore reaches it, or else after the visibility timeout
        (hours). Messages of tasks this worker is still running are left where they are:
        each task acknowledges its own when it ends, so no copy starts beside it. A message
        acknowledged meanwhile is no longer in ``unacked``: restoring it does nothing.
        """
        with _unrestored_lock:
            if not _unrestored:
                return
            running = _running_tags()
            pending = sorted((tag, entry) for tag, entry in _unrestored.items() if tag not in running)
        restored = 0
        try:
            for tag, entry in pending:
                self.qos.restore_interrupted(tag, entry)
                restored += 1
                with _unrestored_lock:
                    _unrestored.pop(tag, None)
        except self.connection_errors:  # Redis away again: a later channel tries the rest
            log.warning("could not yet put %d message(s) back in their queues", len(pending) - restored)
            return
        if pending:
            log.info("put %d unacknowledged message(s) back in their queues after Redis came back", restored)

    def _connparams(self, asynchronous: bool = False) -> dict:
        remembered = self.__dict__.setdefault("_remembered_connparams", {})
        transport = self.connection
        if transport is not None and transport.client is not None:
            remembered[asynchronous] = params = super()._connparams(asynchronous=asynchronous)
            return dict(params)
        if asynchronous in remembered:
            return dict(remembered[asynchronous])
        # Never connected and no longer able to: a connection error, which kombu and Celery handle.
        raise RedisConnectionError("the broker connection of this channel is closed")


def _running_tags() -> set[str]:
    """Delivery tags of the tasks this process's worker has handed to its pool (none outside a worker)."""
    return {r.message.delivery_tag for r in tuple(active_requests) if getattr(r, "message", None) is not None}


class Transport(kombu_redis.Transport):
    Channel = Channel
