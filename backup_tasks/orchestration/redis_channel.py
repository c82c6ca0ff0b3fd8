"""kombu's Redis transport with channels that remember their connection parameters.

broker_transport.py says why (a worker with a free slot would exit when Redis restarts
mid-stage) and installs this transport for the ``redis://`` and ``rediss://`` schemes.
"""

from __future__ import annotations

from kombu.transport import redis as kombu_redis
from redis.exceptions import ConnectionError as RedisConnectionError


class Channel(kombu_redis.Channel):
    """kombu's Redis channel, but its connection parameters outlive the connection object."""

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


class Transport(kombu_redis.Transport):
    Channel = Channel
