"""backup-tasks: distributed backups on Celery that end in a proven restore."""

__version__ = "0.1.0"
