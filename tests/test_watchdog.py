"""Runbook: the watchdog tells you about what did *not* happen, once, and again when it is fixed.

RPO breaches (no fresh verified backup), a tier running out of space and an external
disk that is not mounted: each opens a condition that alerts exactly once, and closes
with a "resolved" notice. Real backups, a real tmpfs mount, a real webhook server, and
the ``backup.watchdog`` task on a real Celery worker.
"""

from __future__ import annotations

import json
import os
import time
from datetime import timedelta
from types import SimpleNamespace

from backup_tasks import alerting, client
from backup_tasks.records import events
from backup_tasks.records.catalog import Catalog
from backup_tasks.ops.watchdog import DiskUsage, run_watchdog, tier_findings
from conftest import run_cli
from notify_servers import closed_port, serve_webhook, wait_for, webhook_server  # noqa: F401
from test_sqlite_backup import make_app_db
from test_storage_external import mount_tmpfs, umount

RPO_SECONDS = 3.6  # rpo_hours = 0.001: a breach the test can wait for


def breaches(hook, target: str) -> list[dict]:
    return [p for p in hook.json_of(f"RPO breach: '{target}'")]


def test_rpo_breach_alerts_exactly_once_and_a_fresh_verified_backup_resolves_it(tmp_path, make_config, runtime_for,
                                                                                 webhook_server):
    db = tmp_path / "app.db"
    make_app_db(db, rows=100)
    cfg = make_config(f'[targets.orders]\nkind = "sqlite"\nhost = "app01"\npath = "{db}"\nrpo_hours = 0.001\n'
                      f'[targets.steady]\nkind = "sqlite"\nhost = "app01"\npath = "{db}"\n',
                      settings=f'alerts = ["{webhook_server.url()}"]\n')
    rt = runtime_for(cfg)
    first = client.enqueue_backup("orders", rt=rt).wait(timeout=60)
    client.enqueue_backup("steady", rt=rt).wait(timeout=60)
    first_row = rt.catalog.get(first["id"])

    # Right after the backup: within the RPO, nothing to say.
    assert run_watchdog(rt, now=first_row.verified_at)["opened"] == []
    assert webhook_server.posts == []

    # The next backup never comes. Once the data is older than the RPO: one alert.
    time.sleep(max(0.0, (first_row.created_at + timedelta(seconds=RPO_SECONDS + 0.3)).timestamp() - time.time()))
    assert run_watchdog(rt)["opened"] == [f"{events.RPO_BREACH}:orders"]
    [alert] = breaches(webhook_server, "orders")
    assert alert["type"] == "failure"
    assert alert["title"] == "[backup-tasks] FAILED: RPO breach: 'orders' has no verified backup within 0.001 h"
    assert "Target:    orders" in alert["message"] and "Host:      app01" in alert["message"]
    assert f"Run:       {first['id']}" in alert["message"]  # the newest run: where to look
    assert "Next step: backupctl list --target orders" in alert["message"] and "backupctl backup orders --wait" in alert["message"]

    # Every later check while it lasts, in this process or from cron in another: no new alert.
    assert run_watchdog(rt)["opened"] == []
    again = json.loads(run_cli("watchdog", "--json", config=cfg, check=0).stdout)
    assert again["opened"] == [] and f"{events.RPO_BREACH}:orders" in again["open"]
    assert len(breaches(webhook_server, "orders")) == 1
    assert len(rt.catalog.events(kind=events.RPO_BREACH)) == 1
    assert breaches(webhook_server, "steady") == []

    # A fresh verified backup clears it, with a "resolved" notice naming that backup.
    fresh = client.enqueue_backup("orders", rt=rt).wait(timeout=60)
    result = run_watchdog(rt, now=rt.catalog.get(fresh["id"]).verified_at)
    assert result["resolved"] == [f"{events.RPO_BREACH}:orders"] and result["open"] == []
    [notice] = webhook_server.json_of("resolved: 'orders'")
    assert notice["type"] == "success" and f"Run:       {fresh['id']}" in notice["message"]
    assert rt.catalog.open_conditions() == []
    assert run_watchdog(rt, now=rt.catalog.get(fresh["id"]).verified_at)["resolved"] == []  # resolved once, too
    assert len(webhook_server.posts) == 2


def app_with_usb_tier(tmp_path, make_config, runtime_for, webhook_server):
    """A SQLite target stored on a local tier and an external 'usb' tier whose mount point
    exists with no disk mounted on it; alerts go to the test's webhook."""
    usb = tmp_path / "usb"
    usb.mkdir()
    db = tmp_path / "app.db"
    make_app_db(db, rows=50)
    tiers = (f'[tiers.local]\nkind = "local"\npath = "{tmp_path / "state" / "store"}"\n'
             f'[tiers.usb]\nkind = "external"\npath = "{usb}"\n')
    rt = runtime_for(make_config(f'[targets.app]\nkind = "sqlite"\nhost = "app01"\npath = "{db}"\nstorage = ["local", "usb"]\n',
                                 settings=f'alerts = ["{webhook_server.url()}"]\n', tiers=tiers))
    return usb, rt


def test_a_missing_mount_and_low_free_space_are_alerted_once_and_resolved(tmp_path, make_config, runtime_for,
                                                                          webhook_server):
    usb, rt = app_with_usb_tier(tmp_path, make_config, runtime_for, webhook_server)
    try:
        # The disk is not there: one alert naming the tier, its path and the targets that use it.
        opened = run_watchdog(rt)["opened"]
        assert f"{events.MOUNT_MISSING}:usb" in opened
        [missing] = webhook_server.json_of("is not mounted")
        assert missing["title"] == f"[backup-tasks] FAILED: external tier 'usb' is not mounted at {usb}"
        assert "Targets:   app" in missing["message"] and f"mount {usb}" in missing["message"]
        assert "then: backupctl backup app --wait" in missing["message"] and "TARGET" not in missing["message"]
        assert run_watchdog(rt)["opened"] == []
        assert len(webhook_server.json_of("is not mounted")) == 1

        # Mounted again, but nearly full (a 16 MiB disk with 15 MiB used): resolved, and low space.
        mount_tmpfs(usb, size="16m")
        filler = usb / "someone-elses-files.bin"
        with open(filler, "wb") as fh:
            fh.write(os.urandom(15 << 20))
        result = run_watchdog(rt)
        assert result["resolved"] == [f"{events.MOUNT_MISSING}:usb"] and f"{events.LOW_SPACE}:usb" in result["opened"]
        assert len(webhook_server.json_of("resolved: external tier 'usb' is mounted again")) == 1
        [low] = webhook_server.json_of("low free space on tier 'usb'")
        assert low["type"] == "warning" and "below the alert threshold (10%)" in low["message"]
        assert "backupctl cleanup --dry-run" in low["message"]
        assert run_watchdog(rt)["opened"] == []

        # Space freed: resolved once.
        filler.unlink()
        assert f"{events.LOW_SPACE}:usb" in run_watchdog(rt)["resolved"]
        assert len(webhook_server.json_of("resolved: tier 'usb' has enough free space again")) == 1
        assert run_watchdog(rt)["resolved"] == []
        assert f"{events.RPO_BREACH}:app" in [c.key for c in rt.catalog.open_conditions()]  # never backed up

        # The disk goes away again within the hour: a change of state is news, whatever the rate limit.
        umount(usb)
        assert f"{events.MOUNT_MISSING}:usb" in run_watchdog(rt)["opened"]
        assert len(webhook_server.json_of("is not mounted")) == 2
    finally:
        umount(usb)


def test_the_watchdog_task_runs_on_a_maintenance_worker_and_alerts(tmp_path, make_config, runtime_for, redis_url,
                                                                   start_worker, webhook_server):
    cfg = make_config(f'[targets.forgotten]\nkind = "sqlite"\nhost = "app01"\npath = "{tmp_path / "app.db"}"\n',
                      settings=f'alerts = ["{webhook_server.url()}"]\n')
    start_worker(cfg, redis_url, ["maintenance"], name="maint@localhost")
    runtime_for(cfg, BACKUP_BROKER_URL=redis_url)
    from backup_tasks.orchestration.monitor_tasks import watchdog

    result = watchdog.delay().get(timeout=60)  # by name, on the maintenance queue, as beat sends it
    assert result["opened"] == [f"{events.RPO_BREACH}:forgotten"]
    alert = wait_for(lambda: webhook_server.json_of("RPO breach: 'forgotten'"), what="the worker's alert")[0]
    assert "has never had a verified backup" in alert["message"] and "Host:      app01" in alert["message"]
    assert watchdog.delay().get(timeout=60)["opened"] == []
    assert len(webhook_server.json_of("RPO breach")) == 1


def test_a_backup_to_an_unmounted_external_tier_alerts_the_missing_mount_at_once(tmp_path, make_config, runtime_for,
                                                                                 webhook_server):
    usb, rt = app_with_usb_tier(tmp_path, make_config, runtime_for, webhook_server)
    run = client.enqueue_backup("app", rt=rt)
    info = run.info()
    assert info["status"] == "failed" and [l["tier"] for l in info["locations"]] == ["local"]  # the local copy is kept
    assert list(usb.iterdir()) == []  # nothing written to the disk underneath

    [mount] = webhook_server.json_of("is not mounted")
    assert mount["type"] == "failure" and mount["title"] == f"[backup-tasks] FAILED: external tier 'usb' is not mounted at {usb}"
    assert "Targets:   app" in mount["message"] and f"mount {usb}" in mount["message"]
    # It names the run that was refused, and the command to run again is one to type as it stands.
    assert "Target:    app" in mount["message"] and "Host:      app01" in mount["message"]
    assert f"Run:       {run.id}" in mount["message"]
    assert "then: backupctl backup app --wait" in mount["message"] and "TARGET" not in mount["message"]
    [run_failed] = webhook_server.json_of("backup of 'app' failed on app01")
    assert f"Run:       {run.id}" in run_failed["message"]


def test_an_rpo_breach_alert_lost_to_a_dead_channel_is_sent_when_the_channel_is_back(tmp_path, make_config, runtime_for):
    port = closed_port()  # the webhook receiver is down when the breach opens
    rt = runtime_for(make_config(f'[targets.forgotten]\nkind = "sqlite"\nhost = "app01"\npath = "{tmp_path / "app.db"}"\n',
                                 settings=f'alerts = ["json://127.0.0.1:{port}/hook"]\n'))
    key = f"{events.RPO_BREACH}:forgotten"

    assert run_watchdog(rt)["opened"] == [key]
    assert len(rt.catalog.events(kind=alerting.CHANNEL_FAILED)) == 1
    [condition] = rt.catalog.open_conditions()
    assert not condition.notified  # nobody has been told yet

    # Still down at the next check: tried again (a second channel failure), the event is not recorded twice.
    assert run_watchdog(rt)["open"] == [key]
    assert len(rt.catalog.events(kind=alerting.CHANNEL_FAILED)) == 2
    assert len(rt.catalog.events(kind=events.RPO_BREACH)) == 1

    # The receiver is back on its port: the next check delivers the breach, and the one after says nothing.
    with serve_webhook(port) as hook:
        assert run_watchdog(rt)["opened"] == []
        [alert] = breaches(hook, "forgotten")
        assert "has never had a verified backup" in alert["message"] and "Host:      app01" in alert["message"]
        assert rt.catalog.open_conditions()[0].notified
        run_watchdog(rt)
        assert len(hook.posts) == 1


def test_a_catalog_from_before_the_notified_column_gets_it_and_its_open_conditions_count_as_alerted(tmp_path):
    import sqlite3

    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:  # the alert_conditions table as the previous release created it
        db.execute("CREATE TABLE alert_conditions (key VARCHAR(200) PRIMARY KEY, kind VARCHAR(64) NOT NULL, "
                   "target VARCHAR(64), tier VARCHAR(64), opened_at DATETIME NOT NULL, detail JSON)")
        db.execute("INSERT INTO alert_conditions VALUES ('rpo.breach:old', 'rpo.breach', 'old', NULL, "
                   "'2024-01-01 00:00:00', NULL)")

    catalog = Catalog(f"sqlite:///{path}")
    [old] = catalog.open_conditions()
    assert old.key == "rpo.breach:old" and old.notified  # alerted by the old release: not sent again
    assert catalog.open_condition("rpo.breach:new", kind=events.RPO_BREACH, target="new")
    assert not [c for c in catalog.open_conditions() if c.key == "rpo.breach:new"][0].notified
    Catalog(f"sqlite:///{path}")  # opening it again changes nothing


def test_low_space_resolves_only_when_clear_of_the_threshold_so_it_does_not_flap():
    tier = SimpleNamespace(name="usb", path="/mnt/usb", options={})
    settings = SimpleNamespace(alert_min_free_percent=10, alert_min_free_bytes=0)

    def low(free: int, *, low_open: bool, total: int = 1000, **options) -> bool:
        t = SimpleNamespace(**{**vars(tier), "options": options})
        [space] = tier_findings(t, mounted=None, usage=DiskUsage(total=total, free=free), settings=settings, low_open=low_open)
        return space.active

    assert low(95, low_open=False)  # 9.5% free: opens
    assert low(105, low_open=True)  # 10.5%: above the threshold, but within the 2-point margin: stays open
    assert low(119, low_open=True) and not low(121, low_open=True)  # clears above 12%
    assert not low(105, low_open=False)  # and 10.5% never opened one
    # A bytes threshold (the tier's min_free_bytes) clears 2% above itself.
    big = dict(total=10**9, min_free_bytes=200 * 10**6)
    assert low(199 * 10**6, low_open=False, **big)
    assert low(203 * 10**6, low_open=True, **big) and not low(205 * 10**6, low_open=True, **big)
