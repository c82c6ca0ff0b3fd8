"""python -m backup_tasks.cli: the same as the backupctl script."""

from backup_tasks.cli.entry import run

run()
