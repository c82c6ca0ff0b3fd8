"""Beat's scheduler: celery-redbeat, kept in step with the targets file and robust to Redis restarts.

``celery -A backup_tasks beat`` uses it (``beat_scheduler`` in celery_app.py); a ``-S`` on
the command line would replace it and lose everything below. On top of
``redbeat.RedBeatScheduler`` it does four things:

- **Follows the targets file.** Every tick it stats the file; when size, mtime or inode
  changed it re-reads it and syncs the entries in Redis: new targets are added, removed
  ones deleted, a changed cron replaces the old one (the last run time is kept, so the
  next run follows the new cron). A file that no longer validates is logged and the
  schedule in force is kept. Workers re-read the file on their own (config_reload.py).
- **Reinstalls lost entries.** If Redis comes back without its data (no persistence),
  the schedule is written again instead of beat publishing nothing from then on.
- **Publishes, then advances.** An entry's next run is recorded only after its task was
  published, so a publish that fails (Redis restarting) is retried on the next tick
  instead of being lost. The price is a possible duplicate if beat dies between the two
  steps; the per-target run lock skips a duplicate that overlaps the first.
- **Rides out Redis restarts and never publishes without the lock.** A Redis error in a
  tick is logged and retried a second later instead of ending beat. Before each tick and
  each publish, beat checks that it still holds the lock; if another beat took it
  meanwhile (the lock expired during an outage), this one publishes nothing more and
  goes back to standby. Beat's own publishes retry for at most half the lock's lifetime
  (the workers' ~50 s would outlast the lock, so a publish begun by the old beat could
  land after the new beat's): a publish that still fails is retried on the next tick.

Timing (measured here: a standby takes over in about 15 s): the lock lives ``beat_lock_timeout`` seconds (15) and the active beat
extends it at least every ``beat_max_loop_interval`` seconds (5). A standby retries the
lock every loop interval, so it takes over within lock timeout + loop interval (≤ 20 s)
of the active beat dying.
"""

from __future__ import annotations

import dataclasses
import logging
import os

from redbeat import RedBeatScheduler
from redbeat.schedulers import acquire_distributed_beat_lock, get_redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import LockError
from redis.exceptions import TimeoutError as RedisTimeoutError

import beat_schedule
from backup_tasks import config
from backup_tasks.errors import BackupError
from backup_tasks.ops import runtime

log = logging.getLogger(__name__)

#: how soon a tick that hit a Redis error is retried
RETRY_SECONDS = 1.0


def _stamp(path: str) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class TargetsScheduler(RedBeatScheduler):
    _config_file: str | None = None
    _config_stamp: tuple | None = None
    _closed = False

    def close(self):
        self._closed = True  # beat is shutting down: a tick still under way must not publish
        super().close()

    def setup_schedule(self):
        if os.environ.get("BACKUP_CONFIG"):
            self._config_file = runtime.current().config.file
            self._config_stamp = _stamp(self._config_file)
        super().setup_schedule()

    def tick(self, *args, **kwargs):
        if self._closed:
            return RETRY_SECONDS
        try:
            if not self._still_active():
                return RETRY_SECONDS
            self._follow_targets_file()
            return super().tick(*args, **kwargs)
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            log.warning("beat: Redis unreachable (%s); trying again in %.0fs", exc.__class__.__name__, RETRY_SECONDS)
            return RETRY_SECONDS
        except LockError:
            log.warning("beat: the beat lock changed hands during a tick; checking again")
            return RETRY_SECONDS

    def apply_async(self, entry, producer=None, advance=True, **kwargs):
        if self.lock_key and self.lock is not None and not self.lock.owned():
            log.warning("beat: lost the lock before publishing %s; the active beat publishes it", entry.name)
            return None
        # The options are copied into the publish; the entry (saved in Redis) keeps its own.
        options = entry.options
        before = options.get("retry_policy")
        options["retry_policy"] = self._publish_retry_policy()
        try:
            result = super().apply_async(entry, producer=producer, advance=False, **kwargs)
        finally:
            if before is None:
                options.pop("retry_policy", None)
            else:
                options["retry_policy"] = before
        if advance:
            self.reserve(entry)
        return result

    def _publish_retry_policy(self) -> dict:
        """Beat's publishes give up (about 1 s a retry) well before its lock could lapse."""
        budget = max(1, int(self.app.conf.redbeat_lock_timeout or 15) // 2)
        return {"max_retries": budget, "interval_start": 0, "interval_step": 0.5, "interval_max": 1}

    # -- the lock -----------------------------------------------------------------------------

    def _still_active(self) -> bool:
        """True when this beat holds the lock; otherwise wait (as a standby) until it does."""
        if not self.lock_key:
            return True
        if self.lock is None:  # Redis was unreachable when beat started: take the lock now, as beat_init would have
            acquire_distributed_beat_lock(sender=type("Beat", (), {"scheduler": self})())
            return self.lock is not None
        lock = self.lock
        if lock.owned():
            return True
        if lock.acquire(blocking=False):
            log.warning("beat: the lock had expired (Redis was away?); took it back")
            return True
        log.warning("beat: another beat holds the lock now; standing by")
        lock.acquire()  # blocks, retrying every max_interval seconds, as a standby does at start
        log.info("beat: acquired the lock again; publishing")
        return True

    # -- the targets file ---------------------------------------------------------------------

    def _follow_targets_file(self) -> None:
        client = get_redis(self.app)
        lost = not client.exists(self.app.redbeat_conf.statics_key)
        stamp = _stamp(self._config_file) if self._config_file else None
        if not lost and stamp == self._config_stamp:
            return
        if stamp != self._config_stamp:
            self._config_stamp = stamp
            if not self._reload():
                if not lost:
                    return
        else:
            log.warning("beat: the schedule is gone from Redis (restarted without persistence?); writing it again")
        before = set(client.smembers(self.app.redbeat_conf.statics_key))
        self.setup_schedule()
        after = set(self.app.conf.beat_schedule)
        log.info("beat: schedule synced from %s: %d entries (added: %s; removed: %s)", self._config_file, len(after),
                 ", ".join(sorted(after - before)) or "none", ", ".join(sorted(before - after)) or "none")

    def _reload(self) -> bool:
        try:
            cfg = config.load(self._config_file)
        except BackupError as exc:
            log.error("beat: the changed targets file is invalid; keeping the schedule in force: %s", exc)
            return False
        if cfg.settings.timezone != str(self.app.conf.timezone or "UTC"):
            # redbeat stores crons without their zone and reads them in the app's, fixed at start
            log.error("beat: timezone changed from %s to %s; the schedule stays in %s until beat is restarted",
                      self.app.conf.timezone, cfg.settings.timezone, self.app.conf.timezone)
            cfg = dataclasses.replace(cfg, settings=dataclasses.replace(cfg.settings, timezone=str(self.app.conf.timezone)))
        runtime.install(runtime.Runtime(cfg))  # routing of beat's own publishes reads the new targets
        self.app.conf.beat_schedule = beat_schedule.build(cfg)
        return True
