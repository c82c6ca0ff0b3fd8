"""Where the CLI and the task start every drill: the kind of drill follows from the target.

A binlog target is drilled to a moment (mysql_pitr/drill.py), a physical PostgreSQL
target from its base backup and WAL (postgres_pitr/physical_drill.py), any other target
by restoring its newest verified backup (drill.py). The choice lives here, above all
three, so the common drill never imports the kinds built on it.
"""

from __future__ import annotations

from backup_tasks.ops import drill
from backup_tasks.ops.mysql_pitr.drill import PitrDrill
from backup_tasks.ops.postgres_pitr.physical_drill import PhysicalDrill
from backup_tasks.ops.runtime import Runtime
from backup_tasks.records import audit


def run_drill(rt: Runtime, target_name: str, *, actor: str = audit.BEAT) -> dict:
    """A drill of ``target_name`` of the kind it needs; a logical one when no other kind applies."""
    target = rt.target(target_name)
    kind = PitrDrill if target.binlog else PhysicalDrill if target.mode == "physical" else None
    return drill.run_drill(rt, target_name, actor=actor, drill_class=kind)
