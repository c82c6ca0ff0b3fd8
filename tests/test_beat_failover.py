"""Runbook: two beats for safety; only one publishes; kill -9 it and the standby takes over, without a duplicate.

Both are real ``celery beat`` processes with the redbeat scheduler on one Redis, with
a 4 s lock and a 1 s loop (production: 15 s and 5 s). No worker runs, so
every published ``backup.start`` stays in the host queue where the test counts it.
"""

from __future__ import annotations

import json
import time

import redis

from conftest import write_config
from distributed import start_beat, wait_for  # noqa: F401,F811 - pytest fixtures

LOCK_TIMEOUT, LOOP = 4, 1
EVERY = 2


def test_only_the_lock_holder_publishes_and_a_standby_takes_over_within_the_lock_timeout(tmp_path, session_keys, redis_url,
                                                                                         start_beat):
    cfg = write_config(tmp_path / "targets.toml", session_keys,
                       settings=f"beat_lock_timeout = {LOCK_TIMEOUT}\nbeat_max_loop_interval = {LOOP}\n",
                       targets=f'[targets.t]\nkind = "files"\nhost = "hostA"\npaths = ["{tmp_path}"]\nschedule = "@every {EVERY}s"\n')
    first, second = start_beat(cfg, redis_url, name="beat1"), start_beat(cfg, redis_url, name="beat2")
    for beat in (first, second):
        beat.wait_log(r"beat: Starting", timeout=30)
    active = wait_for(lambda: next((b for b in (first, second) if b.holds_lock()), None), 15, "one beat to take the lock")
    standby = second if active is first else first

    backups = "backup:t"  # the target's entry; the maintenance entries publish to their own queue
    wait_for(lambda: len(active.sent(backups)) >= 3, 15, "three publishes by the active beat")
    assert standby.sent() == [] and not standby.holds_lock()

    active.kill()  # kill -9: no lock release, the lock has to expire
    killed_at = time.time()
    wait_for(standby.holds_lock, LOCK_TIMEOUT + LOOP + 5, "the standby to take the lock")
    wait_for(lambda: len(standby.sent(backups)) >= 2, 10, "publishes by the new active beat")
    took_over = standby.sent(backups)[0][0]
    assert took_over - killed_at <= LOCK_TIMEOUT + LOOP + 1.5  # within the lock timeout (plus one loop to notice)

    # No duplicate: every publish is one message in the queue, and no two publishes share a slot.
    sends = sorted(active.sent(backups) + standby.sent(backups))
    queued = [json.loads(m) for m in redis.Redis.from_url(redis_url).lrange("host.hostA", 0, -1)]
    assert len(queued) == len(sends)
    assert {m["headers"]["task"] for m in queued} == {"backup.start"}
    assert {m["headers"]["argsrepr"] for m in queued} == {"['t', 'full']"}  # a target name, nothing else
    assert len({m["headers"]["id"] for m in queued}) == len(queued)
    gaps = [later[0] - earlier[0] for earlier, later in zip(sends, sends[1:])]
    assert min(gaps) >= EVERY - 0.5, sends
    assert all(at < killed_at for at, _ in active.sent(backups)) and all(at > killed_at for at, _ in standby.sent(backups))
