"""Runbook: the monthly key rotation is not forgotten.

The watchdog reminds once when the current encryption key has been current longer than
``key_max_age_days``, and says "resolved" once it was rotated; the DR report shows every
key's age and how many stored objects still depend on keys that are no longer current.
Real backups on two tiers, a real rotation, a real webhook; the clock is the watchdog's
``now``, as in the other watchdog runbooks.
"""

from __future__ import annotations

import re
from datetime import timedelta

import pytest

from backup_tasks import client
from backup_tasks.errors import ConfigError
from backup_tasks.ops import report
from backup_tasks.ops.watchdog import run_watchdog
from backup_tasks.records import events
from notify_servers import webhook_server  # noqa: F401  (fixture)
from test_key_rotation import cli_json, site  # noqa: F401  (fixture)


def test_the_watchdog_reminds_to_rotate_once_and_the_report_shows_each_keys_age(site, runtime_for, webhook_server):
    env = {"BACKUP_ALERTS": webhook_server.url(), "BACKUP_KEY_MAX_AGE_DAYS": "2"}
    rt = runtime_for(site.config, **env)
    assert rt.settings.key_max_age_days == 2
    first = client.enqueue_backup("app-sqlite", rt=rt).wait()
    start = rt.catalog.get(first["id"]).created_at  # the key's first use: it has been current since then
    key = f"{events.KEY_MAX_AGE}:{site.old_id}"

    # a day in: nothing to say; three days in: one reminder, naming the key and the commands to run
    assert key not in run_watchdog(rt, now=start + timedelta(days=1))["opened"]
    assert webhook_server.json_of("due for rotation") == []
    assert key in run_watchdog(rt, now=start + timedelta(days=3))["opened"]
    [alert] = webhook_server.json_of("due for rotation")
    assert alert["type"] == "warning"
    assert alert["title"] == f"[backup-tasks] WARNING: encryption key {site.old_id} is due for rotation"
    assert "longer than key_max_age_days (2)" in alert["message"] and "backupctl keys rotate" in alert["message"]
    assert "backupctl reencrypt --wait" in alert["message"]
    # while it lasts, no second reminder
    assert key in run_watchdog(rt, now=start + timedelta(days=4))["open"]
    assert len(webhook_server.json_of("due for rotation")) == 1

    late = report.build(rt, now=start + timedelta(days=3))["encryption_keys"]
    [current] = late["keys"]
    assert current["key_id"] == site.old_id and current["role"] == "current" and current["due"] is True
    assert 2.9 < current["age_days"] <= 3.0 and current["objects"] == 2  # one backup, on two tiers
    assert late["objects_on_old_keys"] == 0 and late["max_age_days"] == 2

    # rotated: the reminder resolves once, and the old key's objects show as still to move
    rotation = cli_json("keys", "rotate", "--out", str(site.root / "keys-b"), config=site.config)
    site.apply(rotation)
    rt = runtime_for(site.config, **env)
    client.enqueue_backup("site", rt=rt).wait()
    soon = start + timedelta(days=1, hours=12)  # the new key is a day and a half old then
    result = run_watchdog(rt, now=soon)
    assert result["resolved"] == [key] and not any(k.startswith(events.KEY_MAX_AGE) for k in result["open"])
    [resolved] = webhook_server.json_of(f"resolved: encryption key {site.old_id}")
    assert resolved["type"] == "success" and "no longer current" in resolved["message"]
    assert run_watchdog(rt, now=soon)["resolved"] == []

    data = report.build(rt, now=soon)
    keys = {k["key_id"]: k for k in data["encryption_keys"]["keys"]}
    assert keys[rotation["recipient_key_id"]]["role"] == "current" and not keys[rotation["recipient_key_id"]]["due"]
    assert keys[site.old_id]["role"] == "old" and keys[site.old_id]["age_days"] > 1.4
    assert data["encryption_keys"]["objects_on_old_keys"] == 2 and data["encryption_keys"]["backups_on_old_keys"] == 1
    html = report.render_html(rt, data, soon)
    assert re.search(r'id="keys-summary"[^>]*>2 stored objects \(1 backups\) still on old keys', html)
    assert f"<code>{site.old_id}</code>" in html
    table = cli_json("report", config=site.config)["encryption_keys"]
    assert table["objects_on_old_keys"] == 2

    # re-encrypted, nothing is left on the old key
    cli_json("reencrypt", config=site.config)
    after = report.build(runtime_for(site.config, **env), now=soon)["encryption_keys"]
    assert after["objects_on_old_keys"] == 0
    assert {k["key_id"]: k["role"] for k in after["keys"]}[site.old_id] == "retired"


def test_key_max_age_days_is_checked_when_loaded(site, runtime_for):
    with pytest.raises(ConfigError) as bad:
        runtime_for(site.config, BACKUP_KEY_MAX_AGE_DAYS="-1")
    assert bad.value.field == "key_max_age_days"
    assert runtime_for(site.config).settings.key_max_age_days == 30
