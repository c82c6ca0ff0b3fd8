"""Source kinds. Importing this package registers every kind with ``base.register``.

``base.source_for(kind)`` imports it first, so callers never import a kind by hand.
"""

from backup_tasks.sources import files, sqlite  # noqa: F401  (imported to register)
from backup_tasks.sources import mysql, postgres  # noqa: F401  (imported to register)
