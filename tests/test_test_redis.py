"""The Redis the tests flush is their own: a redis-server this run started, never a shared one.

A test flushes its DB before and after; on a Redis someone else uses (another
application, another checkout's test run) that would delete their data, whatever a
claim key said.
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit

import redis


def _ancestors(pid: int) -> set[int]:
    found = set()
    while pid > 1:
        found.add(pid)
        with open(f"/proc/{pid}/stat") as fh:
            pid = int(fh.read().rsplit(")", 1)[1].split()[1])  # field 4: the parent's pid
    return found


def test_the_redis_a_test_flushes_was_started_by_this_test_run(redis_url):
    url = urlsplit(redis_url)
    client = redis.Redis.from_url(redis_url)
    server_pid = int(client.info("server")["process_id"])
    assert os.getpid() in _ancestors(server_pid), f"{url.netloc} is a Redis this run did not start"
    assert url.port != 6379
    assert client.dbsize() == 0  # and the DB starts empty
