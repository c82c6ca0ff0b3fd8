"""Celery: the app, the tasks, where they run, and what keeps a distributed run safe
(per-target lock, duplicate deliveries, beat, progress, config reload)."""
