"""backupctl: the operations Celery's own CLI does not cover (README: All commands)."""
