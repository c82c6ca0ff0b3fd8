"""python -m backup_tasks.cli: the same as the backupctl script."""

import sys

from backup_tasks.cli.entry import main

sys.exit(main())
