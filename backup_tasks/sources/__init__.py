"""Source kinds, and the module that implements each.

``base.source_for(kind)`` imports a kind's module the first time the kind is asked for (the
module registers it with ``base.register``), so callers never import a kind by hand, and a
command whose targets are all files does not import the MySQL and PostgreSQL kinds: several
milliseconds of every start-up, before a backup can begin to dump.
"""

#: every kind, and the module whose import registers it
MODULES = {
    "config": "backup_tasks.sources.files.source",
    "files": "backup_tasks.sources.files.source",
    "mysql": "backup_tasks.sources.mysql.source",
    "postgres": "backup_tasks.sources.postgres.source",
    "sqlite": "backup_tasks.sources.sqlite",
}
