"""The Celery application: Redis broker and result backend, or in-process when none is set.

Workers, beat and Flower start through Celery's own CLI::

    BACKUP_CONFIG=/etc/backup-tasks/targets.toml celery -A backup_tasks.orchestration.celery_app worker -Q host.db01,verify

Without a broker URL (``BACKUP_BROKER_URL`` or ``broker_url`` in [settings]) the same
tasks run eagerly in the calling process: the embedded default.
"""

from __future__ import annotations

import os
import threading

from celery import Celery
from celery.signals import after_setup_logger, after_setup_task_logger

import beat_schedule
from backup_tasks import defaults, redaction
from backup_tasks.config import Settings
from backup_tasks.ops import runtime
from backup_tasks.orchestration import broker_transport

broker_transport.install()  # a worker with a free slot survives a Redis restart (see there)

app = Celery("backup_tasks", task_cls="backup_tasks.orchestration.task_boundary:RedactingTask",
             include=["backup_tasks.orchestration.tasks", "backup_tasks.orchestration.monitor_tasks",
                      "backup_tasks.orchestration.log_tasks", "backup_tasks.orchestration.binlog_tasks"])

#: Flower's task list shows these columns unless the operator chose others (FLOWER_TASKS_COLUMNS or
#: --tasks_columns). Its default leaves out args, kwargs and result, which is where each stage shows
#: its target, its run id and, while running, its progress line: without them every row looks alike.
FLOWER_TASKS_COLUMNS = "name,args,kwargs,state,result,received,runtime,worker,uuid"
os.environ.setdefault("FLOWER_TASKS_COLUMNS", FLOWER_TASKS_COLUMNS)

BASE_CONF = dict(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    result_accept_content=["json"],
    # A stage is acknowledged only after it finished; if the worker dies mid-stage the
    # message goes back to the queue and the (idempotent) stage runs again.
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_track_started=True,
    task_send_sent_event=True,
    worker_send_task_events=True,
    result_extended=True,
    result_expires=7 * 24 * 3600,
    broker_connection_retry_on_startup=True,
    broker_transport_options={"visibility_timeout": defaults.BROKER_VISIBILITY_TIMEOUT},
    result_backend_transport_options={"visibility_timeout": defaults.BROKER_VISIBILITY_TIMEOUT},
    task_default_queue="maintenance",
    task_routes=("backup_tasks.orchestration.routing.route",),
    timezone=defaults.TIMEZONE,
    # -- riding out a Redis restart --
    # A worker never gives up reconnecting; a running stage keeps running while the broker
    # is away (its work is local) and acks when it is back.
    broker_connection_retry=True,
    broker_connection_max_retries=None,
    worker_cancel_long_running_tasks_on_connection_loss=False,
    # A stage that finishes while Redis restarts waits to store its result instead of failing.
    result_backend_always_retry=True,
    result_backend_max_retries=30,
    # Publishing (chain continuations, beat, clients) retries across a restart of a few seconds.
    task_publish_retry=True,
    task_publish_retry_policy={"max_retries": 20, "interval_start": 0, "interval_step": 0.5, "interval_max": 3},
    # -- beat: celery-redbeat, one active beat (see beat_sync.py) --
    beat_scheduler="backup_tasks.orchestration.beat_sync:TargetsScheduler",
    beat_max_loop_interval=defaults.BEAT_MAX_LOOP_INTERVAL,
    redbeat_lock_timeout=defaults.BEAT_LOCK_TIMEOUT,
    redbeat_key_prefix=defaults.BEAT_KEY_PREFIX,
    redbeat_redis_options={"socket_timeout": 10, "socket_connect_timeout": 5, "health_check_interval": 30},
    # -- retries of TransientError (StageTask reads these, so [settings] can tune them) --
    backup_task_max_retries=defaults.TASK_MAX_RETRIES,
    backup_task_retry_backoff_max=defaults.TASK_RETRY_BACKOFF_MAX,
)


def configure(settings) -> Celery:
    """Point the app at the configured broker, or make it run tasks in-process."""
    visibility = {"visibility_timeout": settings.broker_visibility_timeout}
    conf = dict(BASE_CONF, timezone=settings.timezone, broker_transport_options=visibility,
                result_backend_transport_options=visibility, beat_max_loop_interval=settings.beat_max_loop_interval,
                redbeat_lock_timeout=settings.beat_lock_timeout, redbeat_key_prefix=settings.beat_key_prefix,
                backup_task_max_retries=settings.task_max_retries,
                backup_task_retry_backoff_max=settings.task_retry_backoff_max)
    if settings.broker_url:
        conf.update(broker_url=settings.broker_url, result_backend=settings.result_backend or settings.broker_url,
                    redbeat_redis_url=settings.broker_url, task_always_eager=False)
    else:
        conf.update(broker_url="memory://localhost/", result_backend="cache+memory://", task_always_eager=True,
                    task_eager_propagates=False)
    previous = (app.conf.broker_url, app.conf.result_backend)
    app.conf.update(conf)
    _drop_redbeat_config()
    if previous != (app.conf.broker_url, app.conf.result_backend):
        _drop_connections()
    return app


def _drop_connections() -> None:
    """Forget pools and the result backend bound to a previous broker.

    A process normally configures once; this matters when one re-points the app (the
    test suite, or a long-lived client switching config files). Celery's after-fork
    hook does exactly the pool part; the backend is cached per app.
    """
    app._after_fork()
    app._backend_cache = None
    app._local = threading.local()


def _drop_redbeat_config() -> None:
    """redbeat caches its config (URL, key prefix, lock) on the app; let it read the new one."""
    for attr in ("redbeat_conf", "redbeat_redis"):
        if attr in app.__dict__:
            delattr(app, attr)


@after_setup_logger.connect
@after_setup_task_logger.connect
def _redact_log_records(logger=None, **_) -> None:
    """Every line a worker, beat or Flower logs passes redaction, Celery's own included:
    its "Task ... raised" line quotes the exception, and a foreign exception is not ours to word."""
    for handler in getattr(logger, "handlers", ()):
        if not any(isinstance(f, redaction.LogFilter) for f in handler.filters):
            handler.addFilter(redaction.LogFilter())


def _configure_from_environment() -> None:
    """Workers, beat and Flower import this module: configure from BACKUP_CONFIG / BACKUP_BROKER_URL."""
    if os.environ.get("BACKUP_CONFIG"):
        configure(runtime.current().settings)
        app.conf.beat_schedule = beat_schedule.build(runtime.current().config)
    elif os.environ.get("BACKUP_BROKER_URL"):
        configure(Settings(broker_url=os.environ["BACKUP_BROKER_URL"], result_backend=os.environ.get("BACKUP_RESULT_BACKEND")))
    else:
        app.conf.update(BASE_CONF)


_configure_from_environment()
