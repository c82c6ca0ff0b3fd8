"""``celery -A backup_tasks``: Celery's own convention finds the app in ``<package>.celery``.

The app itself, its configuration and its tasks live in ``backup_tasks.orchestration``.
"""

from backup_tasks.orchestration.celery_app import app  # noqa: F401

__all__ = ["app"]
