"""A target's ``drill`` table: the server a restore drill restores into, its health checks and its time budget.

A physical PostgreSQL target's drill restores into a temporary data directory instead,
so its table names no server, only the database to count and check in.

Checked when the targets file loads (for database targets) and again when a drill
starts, so a drill that cannot run fails the operator's command, not Sunday's drill.
"""

from __future__ import annotations

from backup_tasks import credentials
from backup_tasks.errors import ConfigError, InputError
from backup_tasks.sources.db import dsn

#: a drill may take this long before it is stopped and counted as failed (RTO budget)
DEFAULT_TIMEOUT_SECONDS = 6 * 3600
DRILL_KEYS = {"server", "password", "checks", "timeout_seconds"}
#: a physical target's drill restores into a temporary data directory on the drill host, so it names no server;
#: ``database`` is where it counts rows and runs its checks (default: the target DSN's database)
PHYSICAL_DRILL_KEYS = {"checks", "timeout_seconds", "database"}


def drill_spec(target) -> dict:
    """The target's validated drill settings; ConfigError naming the field otherwise.

    InputError for a kind whose backups do not restore into a database server: a drill
    needs a server DSN of the target's own engine.
    """
    where = f"target '{target.name}'"
    if target.kind not in dsn.SCHEMES:
        raise InputError(f"target '{target.name}' is a {target.kind} target; drills restore postgres and mysql backups",
                         "a SQLite or files backup is proven by backupctl verify")
    spec = dict(target.drill or {})
    physical = target.mode == "physical"
    allowed = PHYSICAL_DRILL_KEYS if physical else DRILL_KEYS
    unknown = set(spec) - allowed
    if unknown:
        remedy = f"allowed: {', '.join(sorted(allowed))}"
        if physical:
            remedy += " (a physical target's drill restores into a temporary data directory, not onto a server)"
        raise ConfigError(f"unknown drill field(s): {', '.join(sorted(unknown))}", remedy, where=where, field="drill")
    if physical:
        database = spec.get("database")
        if database is not None and (not isinstance(database, str) or not database.strip()):
            raise ConfigError("must be a database name", 'database = "orders"', where=where, field="drill.database")
    elif not spec.get("server"):
        raise ConfigError("no drill server configured", 'add drill = { server = "postgresql://drill@drill01:5432/postgres", '
                          'password = "env:DRILL_PASSWORD", checks = ["select count(*) > 0 from students"] }',
                          where=where, field="drill.server")
    checks = spec.get("checks", [])
    if isinstance(checks, str):
        checks = [checks]
    if not isinstance(checks, list) or not all(isinstance(c, str) and c.strip() for c in checks):
        raise ConfigError("must be a list of SQL queries", 'checks = ["select count(*) > 0 from orders"]', where=where, field="drill.checks")
    timeout = spec.get("timeout_seconds", DEFAULT_TIMEOUT_SECONDS)
    if not isinstance(timeout, (int, float)) or timeout <= 0:
        raise ConfigError("must be a positive number of seconds", where=where, field="drill.timeout_seconds")
    if spec.get("password") is not None:
        credentials.check_syntax(spec["password"], file="", where=where, field="drill.password")
    if physical:
        database = spec.get("database") or dsn.parse_target(target).database
        return {"server": None, "password": None, "database": database, "checks": checks, "timeout_seconds": float(timeout)}
    server = dsn.parse(spec["server"], target.kind, where=where, field_name="drill.server")
    return {"server": server, "password": spec.get("password"), "checks": checks, "timeout_seconds": float(timeout)}
