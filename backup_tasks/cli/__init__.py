"""backupctl: the operations Celery's own CLI does not cover (DESIGN §5)."""
