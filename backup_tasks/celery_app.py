"""``celery -A backup_tasks.celery_app``: the name deployments written before the package split use.

The app lives in ``backup_tasks.orchestration.celery_app``; this module only re-exports it
so existing unit files and scripts keep starting workers, beat and Flower unchanged.
"""

from backup_tasks.orchestration.celery_app import app, configure  # noqa: F401

__all__ = ["app", "configure"]
