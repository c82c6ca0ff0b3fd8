"""Runbook: a dump that suddenly shrinks is suspicious even when it verifies.

Seven normal nightly backups of a real SQLite database, then most of its data goes
missing (the kind of thing a broken application migration does): the eighth backup still
verifies, because it faithfully holds what was there, and the size-anomaly alert goes out.
The rule itself is a pure function, tested on plain numbers.
"""

from __future__ import annotations

import os
import sqlite3

from backup_tasks.policy import anomaly
from backup_tasks import client
from backup_tasks.records import events
from backup_tasks.records.catalog import Catalog, Location, Status
from notify_servers import webhook_server  # noqa: F401


def make_db(path, rows: int) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE attachments (id INTEGER PRIMARY KEY, blob BLOB)")
    conn.executemany("INSERT INTO attachments (blob) VALUES (?)", [(os.urandom(200),) for _ in range(rows)])
    conn.commit()
    conn.close()


def test_a_truncated_dump_sets_off_the_size_anomaly_alert(tmp_path, make_config, runtime_for, webhook_server):
    db = tmp_path / "shop.db"
    make_db(db, rows=1000)  # ~230 KiB of incompressible data
    rt = runtime_for(make_config(f'[targets.shop]\nkind = "sqlite"\nhost = "app01"\npath = "{db}"\n',
                                 settings=f'alerts = ["{webhook_server.url()}"]\n'))
    for _night in range(7):
        assert client.enqueue_backup("shop", rt=rt).wait(timeout=60)["status"] == Status.VERIFIED
        conn = sqlite3.connect(db)  # a little growth every day is normal
        conn.executemany("INSERT INTO attachments (blob) VALUES (?)", [(os.urandom(200),) for _ in range(20)])
        conn.commit()
        conn.close()
    assert webhook_server.posts == [] and rt.catalog.events(kind=events.SIZE_ANOMALY) == []

    conn = sqlite3.connect(db)
    conn.execute("DELETE FROM attachments WHERE id % 5 != 0")  # four fifths gone
    conn.commit()
    conn.execute("VACUUM")
    conn.close()
    truncated = client.enqueue_backup("shop", rt=rt).wait(timeout=60)

    assert truncated["status"] == Status.VERIFIED  # kept and verified: it may be the only copy there is
    [event] = rt.catalog.events(kind=events.SIZE_ANOMALY)
    assert event.backup_id == truncated["id"] and event.severity == "warning"
    assert event.detail["direction"] == "smaller" and event.detail["percent"] < 30
    [alert] = webhook_server.json_of("size anomaly")
    assert alert["type"] == "warning"
    assert alert["title"] == f"[backup-tasks] WARNING: size anomaly: backup of 'shop' is {event.detail['percent']}% of its usual size"
    assert f"Run:       {truncated['id']}" in alert["message"] and "Host:      app01" in alert["message"]
    assert "of the median" in alert["message"] and "of its last 7 backups" in alert["message"]
    assert f"Next step: backupctl show {truncated['id']}" in alert["message"]


def test_the_rule_compares_with_the_median_of_recent_sizes():
    usual = [1000, 1010, 990, 5000, 1005, 995, 1020]  # one outlier does not move a median
    assert anomaly.assess(1000, usual, min_percent=50, max_percent=200) is None
    low = anomaly.assess(400, usual, min_percent=50, max_percent=200)
    assert low is not None and low.direction == "smaller" and low.percent == 40 and low.median == 1005
    high = anomaly.assess(2100, usual, min_percent=50, max_percent=200)
    assert high is not None and high.direction == "larger" and high.percent == 209
    assert anomaly.assess(503, usual, min_percent=50, max_percent=200) is None  # just inside the band
    assert anomaly.assess(60, usual, min_percent=5, max_percent=200) is None  # thresholds are settings
    assert anomaly.assess(10, [1000, 1000], min_percent=50, max_percent=200) is None  # too little history


def stored(catalog: Catalog, backup_id: str, size: int, *, partial: bool = False) -> None:
    """Record a run whose artifact of ``size`` bytes reached the 'local' tier (only that tier, if ``partial``)."""
    catalog.create_run(backup_id, target="shop", kind="sqlite", type="full", host="app01")
    row = catalog.get(backup_id)
    doc = {"target": "shop", "kind": "sqlite", "type": "full", "host": "app01", "parent": None,
           "created_at": row.created_at.isoformat(), "finished_at": row.created_at.isoformat(),
           "plaintext": {"size": size}, "stored": {"size": size, "sha256": "0" * 64}}
    locations = [Location("local", f"shop/{backup_id}/data", size)]
    if partial:
        catalog.record_partial_upload(backup_id, doc, locations, summary={})
    else:
        catalog.record_upload(backup_id, doc, locations, summary={}, next_stage="verify")


def test_failed_runs_removed_by_retention_stay_out_of_the_usual_size(tmp_path):
    catalog = Catalog(f"sqlite:///{tmp_path / 'catalog.db'}")
    # Four good nights of about 1 MB; the oldest has since been removed by retention.
    for night in range(4):
        stored(catalog, f"shop-{night}", 1_000_000)
        catalog.record_verification(f"shop-{night}", ok=True, check=None, detail={}, duration=1.0)
    catalog.drop_locations("shop-0", ["local"])
    # Then three nights whose second tier failed after 100 kB reached the first: failed, copies kept for
    # inspection, removed by retention once a newer backup verified (so they end 'deleted', never verified) ...
    for night in range(4, 7):
        stored(catalog, f"shop-{night}", 100_000, partial=True)
        assert catalog.fail_run(f"shop-{night}", "upload to tier 'usb' failed") == "failed"
        assert catalog.drop_locations(f"shop-{night}", ["local"]) == Status.DELETED
    # ... and one whose verification found it damaged.
    stored(catalog, "shop-7", 100_000)
    catalog.record_verification("shop-7", ok=False, check="stored-sha256", detail={}, duration=1.0)
    stored(catalog, "shop-8", 1_000_000)  # tonight's normal backup, just uploaded

    history = catalog.recent_sizes("shop", before=catalog.get("shop-8").created_at, limit=7, exclude="shop-8")
    assert history == [1_000_000] * 4  # the good ones only, deleted-after-verified included
    assert anomaly.assess(1_000_000, history, min_percent=50, max_percent=200) is None  # no false alarm
