"""Runbook: point-in-time recovery of a real PostgreSQL 15 cluster.

A private cluster archives its WAL through ``backupctl wal push``; a physical base
backup goes through the chain; rows are written in two batches with the time noted
between them; the WAL is shipped; the cluster is restored to that moment into a new
data directory and started: the first batch is there, the second is not.
"""

from __future__ import annotations

import json
import shutil
import stat
import threading
import time

import pytest

from notify_servers import webhook_server  # noqa: F401  (fixture)
from databases import free_port
from pitr_cluster import PG_BIN, PitrCluster, as_postgres

from backup_tasks.ops.postgres_pitr import wal_handover
from backup_tasks.errors import VerificationFailed
from backup_tasks.sources.db import dsn
from backup_tasks.sources.postgres import base_check, base_layout, datadir, outer_tar, walnames
from backup_tasks.sources.postgres import server as pg_server


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
    assert src["format"] == base_layout.SINGLE and set(src["dump_seconds"]) == {"pg_basebackup"} and src["dump_seconds"]["pg_basebackup"] > 0


def utc_now(cluster) -> str:
    return cluster.sql("SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')")[0][0]


def restore_and_count(cluster, moment: str, datadir, *, based_id: str) -> dict:
    """Restore to ``moment``, start the copy, count its rows per batch, check it archives nothing; stop it."""
    port = free_port()
    try:
        done = cluster.json("restore", "--target", cluster.target, "--to-time", moment, "--to-datadir", str(datadir),
                            "--start", "--port", str(port))
        assert done["base_id"] == based_id and done["target_time"] == moment
        assert done["reached_time"] is not None and done["reached_time"] <= moment
        # the promoted copy is on a new timeline, and never archives into the live archive
        assert cluster.sql("SHOW archive_mode", port=port)[0][0] == "off" and done["timeline"] == 2
        assert cluster.sql("SELECT archived_count FROM pg_stat_archiver", port=port)[0][0] == 0
        assert not (datadir / "pg_wal" / wal_handover.DIR_NAME).exists()  # no copies fetched ahead are left behind
        return dict(cluster.sql("SELECT batch, count(*) FROM orders GROUP BY batch", port=port))
    finally:
        cluster.stop_datadir(datadir)


def test_restore_to_two_moments_between_batches(cluster, based):
    cluster.sql("INSERT INTO orders (batch) SELECT 'first' FROM generate_series(1, 100)")
    time.sleep(0.3)
    between = utc_now(cluster)
    time.sleep(0.3)
    cluster.sql("INSERT INTO orders (batch) SELECT 'second' FROM generate_series(1, 50)")
    time.sleep(0.3)
    after_second = utc_now(cluster)  # nothing is committed after it: the copy replays all stored WAL
    cluster.switch_and_wait_archived()
    shipped = cluster.json("wal", "ship", "--target", cluster.target)
    assert shipped["shipped"] and shipped["spool_bytes"] == 0

    window = cluster.json("pitr", cluster.target)
    assert window["ok"] and window["gaps"] == [] and window["unrestorable_bases"] == []
    assert window["earliest"] <= between < after_second <= window["latest"]

    datadir = cluster.root / "restored"
    dry = cluster.json("restore", "--target", cluster.target, "--to-time", between, "--to-datadir", str(datadir), "--dry-run")
    assert dry["dry_run"] and dry["base_id"] == based["id"] and not datadir.exists()

    assert restore_and_count(cluster, between, datadir, based_id=based["id"]) == {"first": 100}
    # a non-empty data directory is refused without --force
    refused = cluster.cli("restore", "--target", cluster.target, "--to-time", after_second, "--to-datadir", str(datadir),
                          "--json", check=2)
    assert "not empty" in refused.stdout
    assert restore_and_count(cluster, after_second, cluster.root / "restored-2", based_id=based["id"]) == {"first": 100, "second": 50}
    # the very end of the base: its WAL (no longer inside the base) comes from the archive; no commit lies before it
    end, port = cluster.root / "restored-end", free_port()
    try:
        done = cluster.json("restore", "--target", cluster.target, "--to-time", window["earliest"], "--to-datadir", str(end),
                            "--start", "--port", str(port))
        assert done["base_id"] == based["id"] and done["started"] and done["timeline"] == 2
        assert cluster.sql("SELECT count(*) FROM orders", port=port)[0][0] == 0
    finally:
        cluster.stop_datadir(end)
    assert not [p for p in (cluster.root / "spool" / cluster.target).iterdir() if p.name.startswith("00000002")]

    # a moment before the first base backup ended is outside the window: refused, nothing written
    refused = cluster.cli("restore", "--target", cluster.target, "--to-time", "2020-01-01T00:00:00Z",
                          "--to-datadir", str(cluster.root / "never"), "--json", check=2)
    assert "outside the window" in refused.stdout and not (cluster.root / "never").exists()


def test_a_base_backup_in_the_old_outer_layout_still_verifies_and_restores(cluster, based, tmp_path):
    """Stored before the streaming dump: a real ``pg_basebackup -Ft -X stream`` run, its three files in the outer tar."""
    cluster.sql("CREATE TABLE old_layout AS SELECT g AS id FROM generate_series(1, 42) g")
    work = cluster.root / "old-layout"
    as_postgres(str(PG_BIN / "pg_basebackup"), "-h", "127.0.0.1", "-p", str(cluster.port), "-U", "postgres", "-D", str(work),
                "-Ft", "-X", "stream", "-c", "fast", "--manifest-checksums=SHA256")
    stored = tmp_path / "old.tar"
    with open(stored, "wb") as out:
        outer_tar.write(out, [(n, work / n) for n in base_layout.OUTER_MEMBERS])
    wal_range = json.loads((work / base_layout.MANIFEST).read_text())["WAL-Ranges"][0]
    report = {"mode": "physical", "format": base_layout.OUTER, "timeline": 1, "wal_segment_size": walnames.DEFAULT_SEGMENT_SIZE,
              "start_lsn": wal_range["Start-LSN"], "stop_lsn": wal_range["End-LSN"]}
    with open(stored, "rb") as fh:
        checked = base_check.check(fh, {"source": report})
    assert checked["files_checked"] > 900 and checked["wal_segments_in_base"] >= 1
    with open(stored, "rb") as fh, pytest.raises(VerificationFailed):  # the format decides the reader, not a guess
        base_check.check(fh, {"source": {**report, "format": base_layout.SINGLE}})

    dest, port = cluster.root / "restored-old-layout", free_port()
    datadir.prepare(dest, force=False, dry_run=False)
    with open(stored, "rb") as fh:
        assert datadir.extract(fh, dest, report)["wal_files_in_base"] >= 1
    # no archive at all: the WAL inside the old layout alone makes the copy consistent
    datadir.write_recovery(dest, restore_command="false", target_time=None)
    pg_server.hand_over(dest, "postgres")
    log = pg_server.start(dest, port, bin_dir=PG_BIN, os_user="postgres")
    try:
        conn = dsn.Server(engine="postgres", host="127.0.0.1", port=port, user="postgres", database="postgres", params={}, password=None)
        pg_server.wait_for_promotion(conn, dest, log, bin_dir=PG_BIN, os_user="postgres", timeout=60)
        assert cluster.sql("SELECT count(*) FROM old_layout", port=port)[0][0] == 42
    finally:
        cluster.stop_datadir(dest)


def test_wal_get_reads_ahead_into_a_private_directory_and_hands_over_only_checked_segments(cluster, based):
    names = []
    for _ in range(4):
        cluster.sql("INSERT INTO orders (batch) SELECT 'ahead' FROM generate_series(1, 10)")
        names.append(cluster.switch_and_wait_archived())
    cluster.json("wal", "ship", "--target", cluster.target)
    pg_wal = cluster.root / "ahead" / "pg_wal"  # restore_command's %p is pg_wal/RECOVERYXLOG in the data directory
    as_postgres("mkdir", "-p", "-m", "700", str(pg_wal))
    ahead = pg_wal / wal_handover.DIR_NAME / cluster.target
    asked = pg_wal / "RECOVERYXLOG"

    def stored_bytes(name):  # the same segment fetched without any read-ahead (not into a pg_wal)
        plain = cluster.root / f"plain-{name}"
        cluster.cli("wal", "get", "--target", cluster.target, name, str(plain))
        return plain.read_bytes()

    def ready():
        return sorted(p.name for p in ahead.iterdir() if not p.name.startswith("."))

    def wait_until(condition):
        deadline = time.monotonic() + 60
        while not condition() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert condition()

    cluster.cli("wal", "get", "--target", cluster.target, names[0], str(asked))
    assert asked.read_bytes() == stored_bytes(names[0])
    wait_until(lambda: ready() == names[1:])
    assert stat.S_IMODE(ahead.stat().st_mode) == 0o700 and ahead.stat().st_uid == cluster.pw.pw_uid
    assert not [p for p in ahead.iterdir() if p.name.endswith(".tmp")]
    # the next call only renames the checked copy into place
    expected = stored_bytes(names[1])
    cluster.cli("wal", "get", "--target", cluster.target, names[1], str(asked))
    assert asked.read_bytes() == expected and not (ahead / names[1]).exists()

    # a stored segment that no longer matches its record is never read ahead; asked for, it stops recovery (126)
    for leftover in names[2:]:
        (ahead / leftover).unlink()
    wait_until(lambda: not wal_handover.running(ahead))  # all it fetched was taken and the archive ends: it stops
    [damaged] = (cluster.root / "store" / "_logs" / cluster.target / "wal").glob(f"{names[3]}.zst.age")
    original = damaged.read_bytes()
    damaged.write_bytes(original[:-100])
    try:
        cluster.cli("wal", "get", "--target", cluster.target, names[1], str(asked))
        wait_until(lambda: not wal_handover.running(ahead))  # a fetch that fails the check stops it
        assert (ahead / names[2]).exists() and not (ahead / names[3]).exists()
        assert not [p for p in ahead.iterdir() if p.name.endswith(".tmp")]
        cluster.cli("wal", "get", "--target", cluster.target, names[3], str(asked), check=126)
    finally:
        damaged.write_bytes(original)
    # past the end of the archive: "no such file" (1), quietly, as recovery asks for it as a matter of course
    _, last = walnames.parse_segment(names[3])
    beyond = walnames.segment_name(1, last + 50)
    missing = cluster.cli("wal", "get", "--target", cluster.target, beyond, str(asked), check=1)
    assert missing.stderr == "" and missing.stdout == ""
    shutil.rmtree(cluster.root / "ahead")

    # a restore that starts the server reads ahead itself, in a thread, past the segments it fetched before the start
    window = cluster.json("pitr", cluster.target)
    datadir, port = cluster.root / "restored-ahead", free_port()
    try:
        done = cluster.json("restore", "--target", cluster.target, "--to-time", window["latest"], "--to-datadir", str(datadir),
                            "--start", "--port", str(port))
        assert done["read_ahead"]["fetched"] >= 1 and done["read_ahead"]["stopped"]
        assert cluster.sql("SELECT count(*) FROM orders WHERE batch = 'ahead'", port=port)[0][0] == 40
        assert not (datadir / "pg_wal" / wal_handover.DIR_NAME).exists()
    finally:
        cluster.stop_datadir(datadir)


def test_a_different_segment_under_an_archived_name_is_refused_and_the_archive_keeps_the_first(cluster, based, webhook_server):
    cluster.sql("INSERT INTO orders (batch) VALUES ('conflict')")  # something to switch away from, whatever ran before
    cluster.switch_and_wait_archived()
    first = cluster.json("wal", "ship", "--target", cluster.target)["shipped"][0]
    original = cluster.root / "original"
    cluster.cli("wal", "get", "--target", cluster.target, first, str(original))
    assert original.stat().st_size == 16 * 1024 * 1024

    # PostgreSQL archiving the same segment again (after a crash) is fine
    same = cluster.root / first
    same.write_bytes(original.read_bytes())
    shutil.chown(same, "postgres", "postgres")
    assert cluster.json("wal", "push", "--target", cluster.target, str(same))["outcome"] == "duplicate"

    # other bytes under that name: refused, reported, and the stored copy is untouched
    same.write_bytes(b"\0" * 1024)
    refused = cluster.cli("wal", "push", "--target", cluster.target, str(same), "--json", check=1)
    assert "already archived" in refused.stdout
    shipping = cluster.cli("wal", "ship", "--target", cluster.target, "--json", check=1,
                           env={"BACKUP_ALERTS": webhook_server.url()})
    assert json.loads(shipping.stdout)["conflicts"] == [first]
    [alert] = webhook_server.json_of("WAL archiving of 'orders' stopped")
    assert alert["type"] == "failure" and first in alert["message"]
    again = cluster.root / "again"
    cluster.cli("wal", "get", "--target", cluster.target, first, str(again))
    assert again.read_bytes() == original.read_bytes()
    # the operator resolved it (stopped the second server): archiving goes on
    (cluster.root / "spool" / cluster.target / "conflicts" / first).unlink()
    for path in (same, original, again):
        path.unlink()


def test_a_segment_whose_upload_fails_stays_spooled_and_is_shipped_once_later(cluster, based, webhook_server):
    cluster.sql("INSERT INTO orders (batch) SELECT 'third' FROM generate_series(1, 10)")
    name = cluster.switch_and_wait_archived()
    wal_dir = cluster.root / "store" / "_logs" / cluster.target / "wal"
    wal_dir.chmod(0o500)  # the tier refuses writes (full disk, lost mount): the shipping run fails
    try:
        # ... and the spool, over its (here tiny) limit, alerts loudly while keeping every segment
        failed = cluster.cli("wal", "ship", "--target", cluster.target, "--json", check=None,
                             env={"BACKUP_ALERTS": webhook_server.url(), "BACKUP_SPOOL_MAX_BYTES": "1"})
        assert failed.returncode != 0
        [alert] = webhook_server.json_of("WAL spool of 'orders'")
        assert alert["type"] == "failure" and "nothing is dropped" in alert["message"]
    finally:
        wal_dir.chmod(0o700)
    spooled = cluster.root / "spool" / cluster.target / name
    assert spooled.exists()  # nothing lost: still waiting in the spool
    before = cluster.json("pitr", cluster.target)["segments_stored"]
    assert name in cluster.json("wal", "ship", "--target", cluster.target)["shipped"]
    assert not spooled.exists()
    assert cluster.json("pitr", cluster.target)["segments_stored"] == before + 1
    assert cluster.json("wal", "ship", "--target", cluster.target)["shipped"] == []  # once


def test_a_missing_segment_is_a_gap_that_pitr_restore_and_the_watchdog_all_see(cluster, based, webhook_server):
    for _ in range(2):
        cluster.sql("INSERT INTO orders (batch) SELECT 'fourth' FROM generate_series(1, 10)")
        cluster.switch_and_wait_archived()
    cluster.json("wal", "ship", "--target", cluster.target)
    assert cluster.json("pitr", cluster.target)["ok"]
    stored = sorted((cluster.root / "store" / "_logs" / cluster.target / "wal").glob("0000000100000000000000*.zst.age"))
    lost = stored[-2]
    lost.unlink()  # a segment vanishes from the tier behind the catalog's back

    window = cluster.json("pitr", cluster.target, check=1)
    assert not window["ok"] and len(window["gaps"]) == 1
    gap = window["gaps"][0]
    assert gap["missing_segments"] == 1 and gap["after"] == stored[-3].name.split(".")[0]
    refused = cluster.cli("restore", "--target", cluster.target, "--to-time", gap["to"], "--to-datadir",
                          str(cluster.root / "after-gap"), "--json", check=2)
    assert "inside a gap" in refused.stdout or "outside the window" in refused.stdout
    watch = cluster.json("watchdog", env={"BACKUP_ALERTS": webhook_server.url()})
    assert f"pitr.gap:{cluster.target}" in watch["opened"]
    [alert] = webhook_server.json_of("gap in the WAL archive of 'orders'")
    assert lost.name.split(".")[0] not in alert["message"] and stored[-3].name.split(".")[0] in alert["message"]


def test_a_new_base_after_a_gap_restores_the_window_and_cleanup_removes_what_only_the_old_base_needed(cluster, based):
    assert not cluster.json("pitr", cluster.target, check=1)["ok"]  # the gap of the test above
    newer = cluster.json("backup", cluster.target, "--wait")
    cluster.switch_and_wait_archived()
    cluster.json("wal", "ship", "--target", cluster.target)
    start = cluster.json("show", newer["id"])["manifest"]["source"]["start_segment"]

    plan = cluster.json("cleanup", "--target", cluster.target, "--dry-run")
    assert plan["would_delete_backups"] == [based["id"]]
    assert {w["name"] for w in plan["would_remove_wal"]} and all(w["name"] < start for w in plan["would_remove_wal"])
    assert all(newer["id"] in w["reason"] for w in plan["would_remove_wal"])

    done = cluster.json("cleanup", "--target", cluster.target)
    assert done["deleted_backups"] == [based["id"]]
    assert [w["name"] for w in done["wal_removed"]] == [w["name"] for w in plan["would_remove_wal"]]
    stored = {p.name.removesuffix(".zst.age") for p in (cluster.root / "store" / "_logs" / cluster.target / "wal").iterdir()}
    assert all(name >= start for name in stored if walnames.kind_of(name) in ("segment", "backup"))
    window = cluster.json("pitr", cluster.target)  # the gap went with the WAL only the old base needed
    assert window["ok"] and window["spans"][0]["bases"] == [newer["id"]] and window["gaps"] == []



def test_drill_replays_to_a_counted_point_while_the_cluster_is_written_and_leaves_nothing(cluster, based):
    """The drill's counts compare exactly although rows keep arriving in many small transactions meanwhile."""
    stop, written = threading.Event(), []

    def writer():
        conn = cluster.connect()
        try:
            while not stop.is_set():
                conn.cursor().execute("INSERT INTO orders (batch) VALUES ('busy')")
                written.append(1)
        finally:
            conn.close()

    # a worker killed mid-drill last week left its copy's directory behind
    stale = cluster.root / "staging" / "drill-orders-killed"
    as_postgres("mkdir", "-p", "-m", "700", str(stale / "data"))
    as_postgres("touch", "-d", "8 days ago", str(stale))
    busy = threading.Thread(target=writer)
    busy.start()
    try:
        time.sleep(0.5)
        drill = cluster.json("drill", cluster.target)
    finally:
        stop.set()
        busy.join()
    assert drill["result"] == "passed", drill
    newest_base = cluster.json("pitr", cluster.target)["spans"][-1]["bases"][-1]
    assert drill["backup_id"] == newest_base and drill["restore_seconds"] > 0
    tables = drill["tables"]
    assert tables["count_mismatches"] == {} and tables["missing"] == [] and tables["extra"] == []
    counted = tables["rows_manifest"]  # rows of orders at the point, counted in the live cluster
    assert counted == tables["rows_restored"] and counted >= 150
    # writes went on before and after the point: the comparison was made under load, not at rest
    assert cluster.sql("SELECT count(*) FROM orders")[0][0] > counted and len(written) > 0
    assert [c["passed"] for c in drill["checks"]] == [True, True]
    assert walnames.parse_lsn(drill["reached_lsn"]) <= walnames.parse_lsn(drill["point"]["lsn"])
    # the copy is stopped and its data directory gone
    assert drill["temp_datadir_removed"] and not list(cluster.root.rglob("drill-orders-*"))
    assert drill["swept"] == [str(stale)]
    assert f"port={drill['port']}" not in as_postgres("ps", "-eo", "args").stdout
    history = cluster.json("drill", cluster.target, "--history")
    assert history[0]["drill_id"] == drill["drill_id"] and history[0]["result"] == "passed"
    assert history[0]["restore_seconds"] == drill["restore_seconds"]


def test_a_drill_whose_check_fails_is_recorded_failed_and_still_removes_its_copy(cluster, based):
    config = cluster.config.read_text()
    cluster.config.write_text(config.replace('"select count(*) > 0 from orders"', '"select count(*) > 100000000 from orders"'))
    try:
        done = cluster.cli("drill", cluster.target, "--json", check=1)
    finally:
        cluster.config.write_text(config)
    drill = json.loads(done.stdout)
    assert drill["result"] == "failed" and drill["failed_step"] == "checks"
    assert drill["tables"]["count_mismatches"] == {}  # the data itself compared fine
    assert drill["temp_datadir_removed"] and not list(cluster.root.rglob("drill-orders-*"))
    assert f"port={drill['port']}" not in as_postgres("ps", "-eo", "args").stdout


def test_a_lost_catalog_is_rebuilt_with_its_wal_and_the_window_is_the_same(cluster):
    before = cluster.json("pitr", cluster.target)
    assert before["ok"] and before["segments_stored"] > 0
    (cluster.root / "catalog.db").unlink()  # the catalog is lost; the tiers are all there is
    rebuilt = cluster.json("catalog", "rebuild")
    assert rebuilt["log_files"] >= before["segments_stored"] and rebuilt["skipped"] == []
    assert rebuilt["drills_restored"] == 1  # the passed drill's signed drilled.json
    after = cluster.json("pitr", cluster.target)
    for field in ("earliest", "latest", "spans", "gaps", "segments_stored", "timeline", "ok"):
        assert after[field] == before[field], field
    # a record that does not belong to its object is not trusted
    wal_dir = cluster.root / "store" / "_logs" / cluster.target / "wal"
    [first, second] = sorted(wal_dir.glob("*.meta.json"))[:2]
    first.write_bytes(second.read_bytes())
    (cluster.root / "catalog.db").unlink()
    again = cluster.json("catalog", "rebuild")
    assert [s["key"].split("/")[-1] for s in again["skipped"]] == [first.name]
    assert "describes" in again["skipped"][0]["reason"]
