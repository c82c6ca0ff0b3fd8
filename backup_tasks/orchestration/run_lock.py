"""One run per target at a time: an overlapping start is skipped, not run twice.

``backup.start`` takes the target's lock before it records anything. When another run
holds it, the start is skipped: the catalog records the attempt as ``failed`` with the
reason ``skipped: target 'T' is already running (run <id>)`` (so ``backupctl list`` and
``client.Run.wait`` show what happened to it) and a ``run.skipped`` event names both
runs. Nothing is dumped.

With a broker the lock is the Redis key ``backup_tasks:lock:target:<name>`` holding the
run id, with a TTL. Every stage of the run refreshes it (``run_lock_ttl``) while it runs
(the chain may cross worker processes, so no process owns it). Between stages the next
message may wait in the host's queue behind other targets' chains for far longer than
that, so the start and every finished stage hand the lock over with the longer
``broker_visibility_timeout`` as its TTL. It is released once the upload is committed or
the run failed: verification only reads storage and may overlap the next run. A chain
that vanished entirely (its messages lost) frees the target when the TTL runs out. A
start that finds the lock held by a run that is over (its release did not reach Redis) or
abandoned (its worker died mid-stage: ops/abandoned.py) takes the lock over at once. A
redelivered start of the same run finds the lock its own and carries on.

In the embedded default the chain runs inside one process, so the lock is an fcntl lock
on ``<staging_dir>/.lock.<target>`` (0600), held for the whole run, removed after it, and
released by the kernel if the process dies.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from pathlib import Path
from typing import Iterator

from backup_tasks.orchestration.ticking import ticking
from backup_tasks import defaults
from backup_tasks.errors import ServiceUnavailable
from backup_tasks.ops import backup
from backup_tasks.records import events

log = logging.getLogger(__name__)

# Take the lock if free, extend it if ours; return whoever holds it now.
_TAKE_OR_EXTEND = """
local holder = redis.call('GET', KEYS[1])
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return ARGV[1]
end
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return holder
"""
_RELEASE_IF_OURS = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def key(target: str) -> str:
    return f"{defaults.RUN_LOCK_PREFIX}{target}"


class RedisRunLock:
    def __init__(self, url: str, target: str, ttl: int, handoff_ttl: int | None = None) -> None:
        self.target = target
        self.key = key(target)
        self.ttl_ms = int(ttl * 1000)
        self.handoff_ms = int((handoff_ttl or ttl) * 1000)
        self._redis = _client(url)

    def hand_over(self, run_id: str) -> None:
        """Keep the lock while the run's next message waits in its queue (taken back if it lapsed)."""
        holder = self._take_or_extend(run_id, max(self.ttl_ms, self.handoff_ms))
        if holder != run_id:
            log.warning("run %s of target %s: the target's lock is held by run %s", run_id, self.target, holder)

    def acquire(self, run_id: str) -> str | None:
        """None when ``run_id`` now holds the lock, else the id of the run that does."""
        holder = self._take_or_extend(run_id)
        return None if holder == run_id else holder

    def refresh(self, run_id: str) -> None:
        """Extend the TTL; take the lock back if it expired meanwhile; warn if another run has it."""
        holder = self._take_or_extend(run_id)
        if holder != run_id:
            log.warning("run %s of target %s: the target's lock is held by run %s", run_id, self.target, holder)

    def release(self, run_id: str) -> None:
        self._redis.eval(_RELEASE_IF_OURS, 1, self.key, run_id)

    def take_over(self, holder: str, run_id: str) -> str | None:
        """Take the lock from ``holder`` (a run that is over); like ``acquire``, None when ``run_id`` holds it now."""
        self._redis.eval(_RELEASE_IF_OURS, 1, self.key, holder)
        return self.acquire(run_id)

    def holder(self) -> str | None:
        value = self._redis.get(self.key)
        return value.decode() if value else None

    def _take_or_extend(self, run_id: str, ttl_ms: int | None = None) -> str:
        from redis.exceptions import RedisError  # only this Redis lock needs redis; the embedded default never loads it

        try:
            holder = self._redis.eval(_TAKE_OR_EXTEND, 1, self.key, run_id, ttl_ms or self.ttl_ms)
        except RedisError as exc:
            raise ServiceUnavailable(f"cannot reach Redis for the lock of target '{self.target}': {exc.__class__.__name__}",
                                     "is the broker's Redis up?") from None
        return holder.decode() if isinstance(holder, bytes) else holder

    @contextlib.contextmanager
    def kept_alive(self, run_id: str) -> Iterator[None]:
        """Refresh the lock every third of its TTL while the block (a stage) runs."""

        def refresh() -> None:
            try:
                self.refresh(run_id)
            except Exception:  # noqa: BLE001 - a missed refresh is not worth failing the stage for; the next one tries again
                log.warning("could not refresh the lock of target %s", self.target, exc_info=True)

        try:
            with ticking(max(1.0, self.ttl_ms / 3000), refresh, name=f"run-lock-{self.target}"):
                yield
        finally:
            try:
                self.hand_over(run_id)
            except Exception:  # noqa: BLE001 - the stage's own outcome matters more; the TTL still holds
                log.warning("could not hand over the lock of target %s", self.target, exc_info=True)


class FileRunLock:
    """The embedded default's lock: an flock held by this process until release (or its death).

    The file is removed on release, so the staging directory holds nothing between runs.
    Whoever locks a file checks it is still the one at the path (not one a releasing
    process just unlinked), and tries again if not.
    """

    _held: dict[str, int] = {}  # path -> fd of the locks this process holds

    def __init__(self, staging_dir: Path, target: str) -> None:
        self.target = target
        self.path = Path(staging_dir) / f".lock.{target}"

    def acquire(self, run_id: str) -> str | None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 256, 0).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                return holder
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # locked a file its holder had just removed: take the current one
        os.ftruncate(fd, 0)
        os.pwrite(fd, run_id.encode(), 0)
        self._held[str(self.path)] = fd
        return None

    def release(self, run_id: str) -> None:
        fd = self._held.pop(str(self.path), None)
        if fd is not None:
            self.path.unlink(missing_ok=True)
            os.close(fd)  # closing drops the flock

    def refresh(self, run_id: str) -> None:
        """Nothing to do: the kernel holds the lock as long as the process does."""

    def hand_over(self, run_id: str) -> None:
        """Nothing to do: the whole chain runs in this process."""

    @contextlib.contextmanager
    def kept_alive(self, run_id: str) -> Iterator[None]:
        yield


def releaser(settings):
    """``release(target, run_id)``: free a target's lock if that run holds it (for ops/abandoned.py)."""
    return lambda target, run_id: for_target(settings, target).release(run_id)


def for_target(settings, target: str) -> RedisRunLock | FileRunLock:
    if settings.embedded:
        return FileRunLock(Path(settings.staging_dir), target)
    return RedisRunLock(settings.broker_url, target, settings.run_lock_ttl, settings.broker_visibility_timeout)


def for_reencryption(settings, backup_id: str) -> RedisRunLock | FileRunLock:
    """One re-encryption of a backup at a time.

    Two at once would each write the backup's next revision under the same object name,
    and the later write could replace the object the earlier one's manifest vouches for.
    """
    return for_target(settings, f"reencrypt.{backup_id}")


_clients: dict[str, object] = {}


def _client(url: str):
    """One client per URL and process; redis-py's pool reconnects after a Redis restart or a fork."""
    import redis  # only a process with a broker needs a client; the embedded default never loads redis

    if url not in _clients:
        _clients[url] = redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5, health_check_interval=30)
    return _clients[url]


def skip(rt, backup_id: str, target: str, type_: str, *, holder: str, actor: str = "") -> dict:
    """Record a start that found its target locked: a ``failed`` entry saying why, and a ``run.skipped`` event."""
    reason = f"skipped: target '{target}' is already running (run {holder})"
    backup.record_run(rt, backup_id, target, type_, actor=actor)
    rt.catalog.fail_run(backup_id, reason)
    events.emit(rt.catalog, events.RUN_SKIPPED, reason, severity="warning", target=target, host=rt.target(target).host,
                backup_id=backup_id, running=holder)
    return {"backup_id": backup_id, "target": target, "type": type_, "stage": "skipped", "status": "failed",
            "reason": reason, "running": holder}
