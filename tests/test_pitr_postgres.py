"""Runbook: point-in-time recovery of a real PostgreSQL 15 cluster.

A private cluster archives its WAL through ``backupctl wal push``; a physical base
backup goes through the chain; rows are written in two batches with the time noted
between them; the WAL is shipped; the cluster is restored to that moment into a new
data directory and started: the first batch is there, the second is not.
"""

from __future__ import annotations

import time

import pytest

from pitr_cluster import PitrCluster


@pytest.fixture(scope="module")
def cluster():
    c = PitrCluster()
    yield c
    c.close()


@pytest.fixture(scope="module")
def based(cluster):
    """The cluster with a table and one verified physical base backup."""
    cluster.sql("CREATE TABLE orders (id serial PRIMARY KEY, batch text NOT NULL, at timestamptz DEFAULT clock_timestamp())")
    info = cluster.json("backup", cluster.target, "--wait")
    return info


def test_physical_base_backup_records_its_wal_range_and_verifies(cluster, based):
    assert based["status"] == "verified"
    manifest = cluster.json("show", based["id"])["manifest"]
    src = manifest["source"]
    assert src["mode"] == "physical" and src["timeline"] == 1
    assert src["server_version"] == "15"
    assert int(src["system_identifier"]) == int(cluster.sql("SELECT system_identifier FROM pg_control_system()")[0][0])
    assert src["start_lsn"] <= src["stop_lsn"] or len(src["start_lsn"]) != len(src["stop_lsn"])
    assert manifest["plaintext"]["format"] == "tar" and manifest["stored"]["name"].endswith(".tar.zst.age")
    assert based["verification"]["detail"]["files_checked"] > 900  # every file of the cluster against its SHA-256


def test_restore_to_a_moment_between_two_batches(cluster, based, tmp_path):
    cluster.sql("INSERT INTO orders (batch) SELECT 'first' FROM generate_series(1, 100)")
    time.sleep(0.5)
    moment = cluster.sql("SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')")[0][0]
    time.sleep(0.5)
    cluster.sql("INSERT INTO orders (batch) SELECT 'second' FROM generate_series(1, 50)")
    cluster.switch_and_wait_archived()
    shipped = cluster.json("wal", "ship", "--target", cluster.target)
    assert shipped["shipped"] and shipped["spool_bytes"] == 0

    window = cluster.json("pitr", cluster.target)
    assert window["ok"] and window["gaps"] == []
    assert window["earliest"] <= moment <= window["latest"]

    datadir = cluster.root / "restored"
    port = __import__("databases").free_port()
    dry = cluster.json("restore", "--target", cluster.target, "--to-time", moment, "--to-datadir", str(datadir), "--dry-run")
    assert dry["dry_run"] and dry["base_id"] == based["id"] and not datadir.exists()
    try:
        done = cluster.json("restore", "--target", cluster.target, "--to-time", moment, "--to-datadir", str(datadir),
                            "--start", "--port", str(port))
        assert done["base_id"] == based["id"] and done["target_time"] == moment
        assert done["reached_time"] is not None and done["reached_time"] <= moment
        counts = dict(cluster.sql("SELECT batch, count(*) FROM orders GROUP BY batch", port=port))
        assert counts == {"first": 100}
        assert cluster.sql("SHOW archive_mode", port=port)[0][0] == "off"
    finally:
        cluster.stop_datadir(datadir)

    # a moment before the first base backup ended is outside the window: refused, nothing written
    refused = cluster.cli("restore", "--target", cluster.target, "--to-time", "2020-01-01T00:00:00Z",
                          "--to-datadir", str(cluster.root / "never"), "--json", check=2)
    assert "window" in refused.stdout and not (cluster.root / "never").exists()
