"""Where each task runs: a target's chain on its host's queue, verification on ``verify``.

Routing happens in the publishing process (CLI, client, Flower, beat), which holds the
targets file; a task for host A is never put where host B's worker can take it.
"""

from __future__ import annotations

import logging

from backup_tasks.errors import ConfigError, InputError
from backup_tasks.orchestration import config_reload

log = logging.getLogger(__name__)

VERIFY_QUEUE = "verify"
MAINTENANCE_QUEUE = "maintenance"
#: restore drills run on a drill host, which holds identities and reaches the drill servers
DRILL_QUEUE = "drill"


def host_queue(host: str) -> str:
    return f"host.{host}"


def route(name, args, kwargs, options, task=None, **kw):
    if options.get("queue"):
        return None
    if name in HOST_TASKS:
        target = (args or [kwargs.get("target")])[0]
        try:  # Flower and beat are long-lived: route by the targets file as it is now
            return {"queue": config_reload.fresh().target(target).queue}
        except (InputError, ConfigError) as exc:
            # No host to send it to (an unknown target, or no valid targets file here): a
            # maintenance worker runs the start task, which records it as a failed run.
            log.warning("%s for target %r goes to the %s queue: %s", name, target, MAINTENANCE_QUEUE, exc)
            return {"queue": MAINTENANCE_QUEUE}
    if name == "backup.wal_ship":  # the spool is a directory on the target's host
        target = (args or [kwargs.get("target")])[0]
        try:
            return {"queue": config_reload.fresh().target(target).queue}
        except (InputError, ConfigError) as exc:
            log.warning("backup.wal_ship for target %r has no host to go to: %s", target, exc)
            return {"queue": MAINTENANCE_QUEUE}
    if name in ("backup.verify", "backup.verify_pending", "backup.reencrypt"):  # re-encryption needs the identities
        return {"queue": VERIFY_QUEUE}
    if name == "backup.drill":
        return {"queue": DRILL_QUEUE}
    if name in MAINTENANCE_TASKS:
        return {"queue": MAINTENANCE_QUEUE}
    return None


#: tasks that run where their target's data is: the backup chain's start, and binlog shipping
HOST_TASKS = ("backup.start", "backup.binlog_ship")

#: housekeeping that needs no host's staging files and no identities: fan-out planners and
#: the alerting work's watchdog and report
MAINTENANCE_TASKS = ("backup.cleanup", "backup.reverify", "backup.drill_due", "backup.watchdog", "backup.report",
                     "backup.reencrypt_unlocked")
