"""Source kinds. Importing this package registers every kind with ``base.register``.

``base.source_for(kind)`` imports it first, so callers never import a kind by hand.
"""

from backup_tasks.sources import sqlite  # noqa: F401  (imported to register)
from backup_tasks.sources.files import source as files  # noqa: F401  (imported to register)
from backup_tasks.sources.mysql import source as mysql  # noqa: F401  (imported to register)
from backup_tasks.sources.postgres import source as postgres  # noqa: F401  (imported to register)
