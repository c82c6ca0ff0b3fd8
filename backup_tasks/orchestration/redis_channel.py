"""kombu's Redis transport with channels that remember their connection parameters, and that
finish, once Redis is back, the restore of unacknowledged messages a broker restart interrupted.

broker_transport.py says why (a worker with a free slot would exit when Redis restarts
mid-stage, and a message it had received but not started would wait hours) and installs
this transport for the ``redis://`` and ``rediss://`` schemes.
"""

from __future__ import annotations

import logging
import threading

from kombu.transport import redis as kombu_redis
from redis.exceptions import ConnectionError as RedisConnectionError

log = logging.getLogger(__name__)

#: delivery tags, in Redis's ``unacked`` hash, that a closing channel could not put back in their queues
_unrestored: set[str] = set()
_unrestored_lock = threading.Lock()


class QoS(kombu_redis.QoS):
    """kombu's Redis QoS, but a restore that fails because Redis is away is remembered, to be done later."""

    def restore_unacked(self, client=None):
        try:
            return super().restore_unacked(client)
        except self.channel.connection_errors:
            with _unrestored_lock:
                # Some may have been restored before Redis went: restoring a tag twice finds
                # nothing the second time, so all are kept.
                _unrestored.update(self._delivered)
            log.warning("could not put %d unacknowledged message(s) back in their queues, Redis is away; "
                        "they will be once it is back", len(self._delivered))
            raise


class Channel(kombu_redis.Channel):
    """kombu's Redis channel, but its connection parameters outlive the connection object."""

    QoS = QoS

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)  # has reached Redis (a PING), or raised
        self._restore_interrupted()

    def _restore_interrupted(self) -> None:
        """Put back in their queues the messages an earlier channel of this process failed to restore.

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
            tags = sorted(_unrestored - _running_tags())
        restored = 0
        try:
            for tag in tags:
                self.qos.restore_by_tag(tag)
                restored += 1
                with _unrestored_lock:
                    _unrestored.discard(tag)
        except self.connection_errors:  # Redis away again: a later channel tries the rest
            log.warning("could not yet put %d unacknowledged message(s) back in their queues", len(tags) - restored)
            return
        if tags:
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
    from celery.worker.state import active_requests

    return {r.message.delivery_tag for r in tuple(active_requests) if getattr(r, "message", None) is not None}


class Transport(kombu_redis.Transport):
    Channel = Channel
