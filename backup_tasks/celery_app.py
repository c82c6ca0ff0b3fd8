"""The Celery application: Redis broker and result backend, or in-process when none is set.

Workers, beat and Flower start through Celery's own CLI::

    BACKUP_CONFIG=/etc/backup-tasks/targets.toml celery -A backup_tasks.celery_app worker -Q host.db01,verify

Without a broker URL (``BACKUP_BROKER_URL`` or ``broker_url`` in [settings]) the same
tasks run eagerly in the calling process: the embedded default.
"""

from __future__ import annotations

import os

from celery import Celery

from backup_tasks import defaults

app = Celery("backup_tasks", include=["backup_tasks.tasks", "backup_tasks.monitor_tasks"])

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
    task_routes=("backup_tasks.routing.route",),
    timezone=defaults.TIMEZONE,
)


def configure(settings) -> Celery:
    """Point the app at the configured broker, or make it run tasks in-process."""
    conf = dict(BASE_CONF, timezone=settings.timezone)
    if settings.broker_url:
        conf.update(broker_url=settings.broker_url, result_backend=settings.result_backend or settings.broker_url,
                    task_always_eager=False)
    else:
        conf.update(broker_url="memory://localhost/", result_backend="cache+memory://", task_always_eager=True,
                    task_eager_propagates=False)
    previous = (app.conf.broker_url, app.conf.result_backend)
    app.conf.update(conf)
    if previous != (app.conf.broker_url, app.conf.result_backend):
        _drop_connections()
    return app


def _drop_connections() -> None:
    """Forget pools and the result backend bound to a previous broker.

    A process normally configures once; this matters when one re-points the app (the
    test suite, or a long-lived client switching config files). Celery's after-fork
    hook does exactly the pool part; the backend is cached per app.
    """
    import threading

    app._after_fork()
    app._backend_cache = None
    app._local = threading.local()


def _configure_from_environment() -> None:
    """Workers, beat and Flower import this module: configure from BACKUP_CONFIG / BACKUP_BROKER_URL."""
    if os.environ.get("BACKUP_CONFIG"):
        import beat_schedule
        from backup_tasks import runtime

        configure(runtime.current().settings)
        app.conf.beat_schedule = beat_schedule.build(runtime.current().config)
    elif os.environ.get("BACKUP_BROKER_URL"):
        from backup_tasks.config import Settings

        configure(Settings(broker_url=os.environ["BACKUP_BROKER_URL"], result_backend=os.environ.get("BACKUP_RESULT_BACKEND")))
    else:
        app.conf.update(BASE_CONF)


_configure_from_environment()
