"""Runbook: after a rotation, the old key stays needed while archived WAL and binlogs are on it.

Re-encryption moves backups, not the logs of a point-in-time window: those age out with
the bases they follow. Until then ``keys status`` counts them against their key and
never calls it retired. Real shipping: a WAL segment pushed and shipped (no PostgreSQL
needed for that) and the binlogs of a private MariaDB, to two local tiers.
"""

from __future__ import annotations

import json
import os

from backup_tasks.ops.mysql_pitr import ship as binlog_ship

from backup_tasks.ops.postgres_pitr import wal
from backup_tasks.ops.keys.status import key_status
from backup_tasks.records import keys
from conftest import run_cli
from databases import binlog_mariadb, unique  # noqa: F401  (fixture)
from test_key_rotation import Site, cli_json
from test_mysql_pitr import make_items, mb, pitr_target

TIERS = ["local", "offsite"]


def test_keys_status_counts_wal_and_binlogs_and_never_retires_a_key_they_depend_on(tmp_path, runtime_for, binlog_mariadb):
    port, database = binlog_mariadb, unique("keylogs")
    make_items(port, database)
    targets = ('[targets.orders]\nkind = "postgres"\nmode = "physical"\nhost = "db01"\n'
               'dsn = "postgresql://replicator@127.0.0.1:5432/postgres"\nstorage = ["local", "offsite"]\n'
               + pitr_target("shop", port, database, extra='storage = ["local", "offsite"]\n'))
    site = Site(tmp_path, targets)
    env = {"BACKUP_SPOOL_DIR": str(tmp_path / "spool")}

    def ship_logs(segment: str) -> int:
        """One WAL segment and every binlog closed so far, shipped under the current key; returns the binlogs shipped."""
        rt = runtime_for(site.config, **env)
        path = tmp_path / segment
        path.write_bytes(os.urandom(1 << 16))
        assert wal.push(rt, "orders", path)["outcome"] == "spooled"
        assert wal.ship(rt, "orders")["shipped"] == [segment]
        with mb(port, database) as cur:
            cur.execute("INSERT INTO items VALUES (%s, 'more', 1)", (100 + int(segment[-2:], 16),))
        shipped = binlog_ship.ship(rt, "shop")["shipped"]
        assert shipped
        return len(shipped)

    try:
        on_old = ship_logs("000000010000000000000003")
        new = site.root / "keys-b"
        site.apply(cli_json("keys", "rotate", "--out", str(new), config=site.config))
        new_id = json.loads(run_cli("keys", "status", "--json", config=site.config, check=0).stdout)["current"][0]
        assert new_id != site.old_id

        # No backup is on the old key, and reencrypt has nothing to move: only the logs keep it needed.
        assert cli_json("reencrypt", config=site.config)["backups"] == []
        on_new = ship_logs("000000010000000000000004")
        status = {k["key_id"]: k for k in cli_json("keys", "status", config=site.config)["keys"]}
        old = status[site.old_id]
        assert (old["role"], old["deletable"], old["backups"]) == ("old", False, 0)
        assert (old["wal_files"], old["binlogs"]) == (1, on_old)
        assert old["tiers"] == {t: {"backups": 0, "objects": 1 + on_old, "wal_files": 1, "binlogs": on_old} for t in TIERS}
        table = run_cli("keys", "status", config=site.config, env={"COLUMNS": "200"}, check=0).stdout
        assert "WAL files" in table and "binlogs" in table and site.old_id in table
        current = status[new_id]
        assert (current["role"], current["wal_files"], current["binlogs"]) == ("current", 1, on_new)
        # without the old identity here, the logs on the old key are named as what could not be restored
        site.identities.write_text((new / keys.IDENTITY_FILE).read_text())
        [warning] = key_status(runtime_for(site.config))["warnings"]
        assert f"1 WAL files and {on_old} binlogs depend on key {site.old_id}" in warning

        # Once retention has dropped the old key's logs, nothing depends on it: retired, deletable.
        rt = runtime_for(site.config)
        for row in rt.catalog.logs("orders", "wal"):
            if site.old_id in row.key_ids:
                rt.catalog.forget_log("orders", "wal", row.name)
        for row in rt.catalog.binlogs("shop"):
            if site.old_id in row.detail["encryption"]["recipients"]:
                rt.catalog.delete_binlog("shop", row.name)
        status = {k["key_id"]: k for k in key_status(rt)["keys"]}
        assert (status[site.old_id]["role"], status[site.old_id]["deletable"]) == ("retired", True)
        assert status[new_id]["binlogs"] == on_new and status[new_id]["role"] == "current"
    finally:
        with mb(port) as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{database}`")
