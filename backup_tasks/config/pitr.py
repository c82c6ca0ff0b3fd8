"""The point-in-time fields of a target: ``binlog`` (MySQL/MariaDB) and ``pitr_rpo_minutes``.

Checked here, touching no server: whether the server really writes a binary log is
asked of it where a connection is made (``backupctl targets``, the dump, shipping).
"""

from __future__ import annotations

from backup_tasks import defaults
from backup_tasks.errors import ConfigError


def binlog_fields(spec: dict, kind: str, *, file: str, where: str) -> dict:
    """``binlog`` and ``pitr_rpo_minutes`` as the Target takes them; ConfigError on a wrong type or kind."""
    binlog = spec.get("binlog", False)
    if not isinstance(binlog, bool):
        raise ConfigError("must be true or false", "binlog = true", file=file, where=where, field="binlog")
    if binlog and kind != "mysql":
        raise ConfigError(f"binlog = true is for mysql targets; this one is {kind}",
                          "remove binlog, or use it on a kind = \"mysql\" target", file=file, where=where, field="binlog")
    rpo = spec.get("pitr_rpo_minutes")
    if rpo is not None and (isinstance(rpo, bool) or not isinstance(rpo, (int, float)) or rpo <= 0):
        raise ConfigError("must be a positive number of minutes", "pitr_rpo_minutes = 5", file=file, where=where,
                          field="pitr_rpo_minutes")
    if binlog and rpo is None:
        rpo = defaults.PITR_RPO_MINUTES
    return {"binlog": binlog, "pitr_rpo_minutes": rpo}
