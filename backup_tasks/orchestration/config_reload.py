"""A running worker picks up a changed targets file without a restart.

Workers load the targets file once per process (runtime.current()). Before each task
they call ``fresh()``, which stats the file (size, mtime, inode: one syscall) and, when it
changed, loads it again and installs the new runtime. A new target on this host is then
runnable at once (its queue, ``host.<name>``, is one the worker already consumes); a
target on a new host needs that host's worker, started with workers/launch.py. A file
that no longer validates is logged and the runtime in force is kept, so a typo never
stops backups that were working. Beat follows the file the same way (beat_sync.py).

A process that loaded its file from elsewhere than BACKUP_CONFIG (``backupctl api serve
--config FILE``) says so with ``follow(FILE)``, and is then kept fresh the same way: the
API answers for a target added after it started instead of a 404 until restarted.

Broker and result-backend URLs are read once: changing them needs a worker restart.
"""

from __future__ import annotations

import logging
import os
import threading

from backup_tasks import config
from backup_tasks.ops import runtime
from backup_tasks.errors import BackupError

log = logging.getLogger(__name__)

_seen: tuple[runtime.Runtime, tuple | None] | None = None
#: a targets file this process serves from besides BACKUP_CONFIG's (see follow())
_followed: str | None = None
#: the API calls fresh() from many threads at once; one of them reloads, the others wait for it
_reloading = threading.RLock()


def follow(path: str | os.PathLike) -> None:
    """This process's runtime comes from ``path`` (not BACKUP_CONFIG): keep it fresh the same way."""
    global _followed
    _followed = os.fspath(path)


def _stamp(path: str) -> tuple:
    """What changes when the file is edited or replaced; OSError when it cannot be stat'd."""
    st = os.stat(path)
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def _from_environment(rt: runtime.Runtime) -> bool:
    """Whether rt is the file BACKUP_CONFIG names (what workers, beat and Flower run on) or follow() named.

    A runtime a caller built itself (the CLI's --config, a test with its own environment)
    is theirs: re-reading it here with this process's environment could change it.
    """
    for named in (os.environ.get("BACKUP_CONFIG"), _followed):
        try:
            if named and os.path.samefile(named, rt.config.file):
                return True
        except OSError:
            continue
    return False


def fresh() -> runtime.Runtime:
    """The process's runtime, re-loaded first if its targets file changed since it was loaded.

    A targets file that can no longer be read (removed, or its mount gone) keeps the
    runtime in force, and says so once in the log; it is loaded again when it is back.
    """
    with _reloading:
        return _fresh()


def _fresh() -> runtime.Runtime:
    global _seen
    rt = runtime.current()
    try:
        stamp = _stamp(rt.config.file)
    except OSError as exc:
        if _seen is None or _seen[0] is not rt or _seen[1] is not None:  # once, not before every task
            log.warning("the targets file %s cannot be read (%s); keeping the configuration in force", rt.config.file,
                        exc.strerror or exc)
            _seen = (rt, None)
        return rt
    if not _from_environment(rt):
        return rt
    if _seen is not None:
        if _seen[0] is not rt:  # installed by someone else (the CLI, a test): theirs to manage
            _seen = (rt, stamp)
            return rt
        if stamp == _seen[1]:
            return rt
    # First call in this process (which version of the file was rt loaded from? load it to
    # be sure: a few milliseconds, once), or the file changed since.
    try:
        new = runtime.install(runtime.Runtime(config.load(rt.config.file)))
    except BackupError as exc:
        log.error("the changed targets file %s is invalid; keeping the configuration in force: %s", rt.config.file, exc)
        _seen = (rt, stamp)
        return rt
    if _seen is not None:
        log.info("targets file %s changed: reloaded (%d targets)", rt.config.file, len(new.config.targets))
    _seen = (new, stamp)
    return new
