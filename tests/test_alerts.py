"""Runbook: when a backup fails, someone is told (by mail or webhook), once, with what to do next.

Every channel here is real: an SMTP server (aiosmtpd) and an HTTP server started by the
test receive exactly what a mailbox or a chat bridge would. Backups run on the embedded
default (no broker), or through ``backupctl`` in its own process.
"""

from __future__ import annotations

import json
import logging
from datetime import timedelta

import pytest

from backup_tasks import alerting, client, config
from backup_tasks.records import events, manifest
from backup_tasks.records.catalog import AlertSentRow, Catalog, Status
from backup_tasks.errors import ConfigError, VerificationFailed
from backup_tasks.ops.verify import verify_backup
from conftest import run_cli
from databases import make_pg_database, pg, unique
from notify_servers import Mailbox, closed_port, serve_webhook, smtp_server, webhook_server  # noqa: F401
from test_sqlite_backup import make_app_db

SMALL_PG = "CREATE TABLE students (id serial PRIMARY KEY, name text); INSERT INTO students (name) SELECT 'pupil ' || g FROM generate_series(1, 50) g;"


def sqlite_target(name: str, path, host: str = "app01") -> str:
    return f'[targets.{name}]\nkind = "sqlite"\nhost = "{host}"\npath = "{path}"\n'


def alerts_setting(*urls: str, extra: str = "") -> str:
    return f"alerts = {json.dumps(list(urls))}\n{extra}"


def test_a_failed_backup_mails_ops_with_target_host_run_and_the_next_command(tmp_path, make_config, runtime_for, smtp_server):
    db = tmp_path / "orders.db"
    make_app_db(db, rows=50)
    rt = runtime_for(make_config(sqlite_target("orders-db", tmp_path / "moved-away.db") + sqlite_target("notes", db),
                                 settings=alerts_setting(smtp_server.url)))

    run = client.enqueue_backup("orders-db", rt=rt)
    assert run.status() == Status.FAILED

    assert len(smtp_server.messages) == 1
    mail = smtp_server.messages[0]
    assert smtp_server.envelopes[0] == ("backup-tasks@example.org", ["ops@example.org"])
    assert mail["Subject"] == "[backup-tasks] FAILED: backup of 'orders-db' failed on app01"
    body = Mailbox.text(mail)
    assert "moved-away.db does not exist" in body  # what happened
    assert "Target:    orders-db" in body and "Host:      app01" in body and f"Run:       {run.id}" in body
    assert "Stage:     dump" in body
    assert f"Next step: backupctl show {run.id}" in body
    assert "backupctl backup orders-db --wait" in body

    # A successful backup says nothing unless success notices were asked for.
    assert client.enqueue_backup("notes", rt=rt).status() == Status.VERIFIED
    assert len(smtp_server.messages) == 1


def test_a_failed_verification_posts_the_alert_json_to_a_webhook(tmp_path, make_config, runtime_for, webhook_server):
    db = tmp_path / "app.db"
    make_app_db(db, rows=200)
    cfg = make_config(sqlite_target("app-sqlite", db), settings=alerts_setting(webhook_server.url("/hooks/backup")))
    rt = runtime_for(cfg)
    entry = client.enqueue_backup("app-sqlite", rt=rt).wait()
    stored = rt.storage("local").inner.root / entry["locations"][0]["key"]
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0xFF  # a bad disk
    stored.write_bytes(bytes(data))

    run_cli("verify", entry["id"], "--json", config=cfg, check=1)  # another process: the CLI

    assert len(webhook_server.posts) == 1
    post = webhook_server.posts[0]
    assert post["path"] == "/hooks/backup" and post["headers"]["Content-Type"].startswith("application/json")
    doc = post["json"]
    assert doc["type"] == "failure"
    assert doc["title"] == "[backup-tasks] FAILED: verification of a backup of 'app-sqlite' failed"
    assert f"verification of {entry['id']} failed: stored-sha256" in doc["message"]
    assert "Target:    app-sqlite" in doc["message"] and "Host:      app01" in doc["message"]
    assert f"Next step: do not rely on this backup: backupctl show {entry['id']}" in doc["message"]
    assert "backupctl backup app-sqlite --wait" in doc["message"]


def test_two_damaged_backups_are_two_alerts_and_a_re_verify_of_one_is_held_back(tmp_path, make_config, runtime_for,
                                                                                 webhook_server):
    db = tmp_path / "app.db"
    make_app_db(db, rows=200)
    rt = runtime_for(make_config(sqlite_target("app-sqlite", db),
                                 settings=alerts_setting(webhook_server.url(), extra="alert_repeat_minutes = 60\n")))
    entries = [client.enqueue_backup("app-sqlite", rt=rt).wait() for _ in range(2)]
    for entry in entries:  # someone edits both manifests (say, to hide a host): their signatures no longer match
        path = rt.storage("local").inner.root / manifest.manifest_key("app-sqlite", entry["id"])
        doc = json.loads(path.read_bytes())
        doc["host"] = "elsewhere"
        path.write_text(json.dumps(doc))

    for entry in entries + entries[:1]:  # each once, then the first again (a rolling re-verify)
        with pytest.raises(VerificationFailed):
            verify_backup(rt, entry["id"])

    # One alert per damaged backup, each naming its own run; the repeat within the hour is held back.
    alerts = webhook_server.json_of("verification of a backup of 'app-sqlite' failed")
    assert len(alerts) == 2
    assert all(f"Run:       {e['id']}" in a["message"] for e, a in zip(entries, alerts))
    assert len(rt.catalog.events(kind=events.VERIFY_FAILED)) == 3  # all three are in the catalog


def test_identical_alerts_are_sent_once_per_window_even_from_different_processes(tmp_path, make_config, runtime_for,
                                                                                   webhook_server):
    cfg = make_config(sqlite_target("gone", tmp_path / "nope.db") + sqlite_target("also-gone", tmp_path / "nope2.db"),
                      settings=alerts_setting(webhook_server.url(), extra="alert_repeat_minutes = 60\n"))
    rt = runtime_for(cfg)

    first = client.enqueue_backup("gone", rt=rt)
    second = run_cli("backup", "gone", "--json", config=cfg, check=1)  # the same failure, from another process
    assert json.loads(second.stdout)["status"] == Status.FAILED
    failures = [p for p in webhook_server.json_of("backup of 'gone' failed")]
    assert len(failures) == 1 and first.id in failures[0]["message"]
    assert len(rt.catalog.events(kind=events.CHAIN_FAILED)) == 2  # both are in the catalog, one was sent

    # A different target failing is a different alert.
    client.enqueue_backup("also-gone", rt=rt)
    assert len(webhook_server.json_of("backup of 'also-gone' failed")) == 1

    # An hour later the same failure is news again, and says how many were held back.
    ev = rt.catalog.events(kind=events.CHAIN_FAILED)[-2]
    later = alerting.from_event(kind=ev.kind, severity=ev.severity, message=ev.message, target=ev.target, host=ev.host,
                                backup_id=ev.backup_id, detail=ev.detail, at=ev.at + timedelta(minutes=61), config=rt.config)
    held = alerting.from_event(kind=ev.kind, severity=ev.severity, message=ev.message, target=ev.target, host=ev.host,
                               backup_id=ev.backup_id, detail=ev.detail, at=ev.at + timedelta(minutes=62), config=rt.config)
    assert later.dedupe_key == held.dedupe_key == alerting.from_event(
        kind=ev.kind, severity=ev.severity, message=rt.catalog.events(kind=events.CHAIN_FAILED)[0].message, target=ev.target,
        host=ev.host, backup_id=rt.catalog.events(kind=events.CHAIN_FAILED)[0].backup_id, detail=ev.detail).dedupe_key
    assert alerting.send(later, rt.settings.alerts, settings=rt.settings, config=rt.config, catalog=rt.catalog).sent
    assert alerting.send(held, rt.settings.alerts, settings=rt.settings, config=rt.config, catalog=rt.catalog).suppressed
    failures = webhook_server.json_of("backup of 'gone' failed")
    assert len(failures) == 2
    assert "(1 identical alert suppressed since" in failures[1]["message"]
    with rt.catalog._session() as s:
        assert s.get(AlertSentRow, later.dedupe_key).suppressed == 1  # the one at +62 min


def test_an_alert_that_reached_no_channel_does_not_use_up_the_window(tmp_path, make_config, runtime_for):
    port = closed_port()  # the chat bridge is down: nothing listens yet
    rt = runtime_for(make_config(sqlite_target("gone", tmp_path / "nope.db"),
                                 settings=alerts_setting(f"json://127.0.0.1:{port}/hook", extra="alert_repeat_minutes = 60\n")))

    # Two failures while the channel is down: each is tried (and fails), neither counts as sent.
    client.enqueue_backup("gone", rt=rt)
    client.enqueue_backup("gone", rt=rt)
    assert len(rt.catalog.events(kind=alerting.CHANNEL_FAILED)) == 2
    with rt.catalog._session() as s:
        assert s.query(AlertSentRow).count() == 0

    # The bridge comes back on its port: the next identical failure is delivered, within the hour.
    with serve_webhook(port) as hook:
        third = client.enqueue_backup("gone", rt=rt)
        [alert] = hook.json_of("backup of 'gone' failed")
        assert f"Run:       {third.id}" in alert["message"]
        # And from now on the window holds identical ones back, as it should.
        client.enqueue_backup("gone", rt=rt)
        assert len(hook.json_of("backup of 'gone' failed")) == 1


def test_a_broken_channel_never_fails_the_backup_and_is_logged(tmp_path, make_config, runtime_for, webhook_server, caplog):
    db = tmp_path / "app.db"
    make_app_db(db, rows=100)
    dead = closed_port()
    urls = ["nosuchservice://whatever/at/all", f"json://127.0.0.1:{dead}/hook", webhook_server.url()]
    rt = runtime_for(make_config(sqlite_target("app-sqlite", db) + sqlite_target("gone", tmp_path / "nope.db"),
                                 settings=alerts_setting(*urls, extra="alert_on_success = true\n")))

    with caplog.at_level(logging.INFO, logger="backup_tasks.alerts"):
        run = client.enqueue_backup("app-sqlite", rt=rt)
        info = run.wait(timeout=60)
    assert info["status"] == Status.VERIFIED  # the backup is untouched by two dead channels
    failed = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any("alert channel nosuchservice://... failed to deliver backup.verified" in m and "not a usable apprise URL" in m
               for m in failed), failed
    assert any(f"alert channel json://127.0.0.1:{dead}/hook failed to deliver backup.verified" in m for m in failed), failed
    notices = webhook_server.json_of("verified")
    assert len(notices) == 1 and notices[0]["type"] == "success"  # the working channel still got the notice
    assert notices[0]["title"] == "[backup-tasks] OK: backup of 'app-sqlite' verified"
    assert f"backupctl restore {run.id} --to PATH" in notices[0]["message"]
    recorded = rt.catalog.events(kind=alerting.CHANNEL_FAILED)
    assert len(recorded) == 2 and {e.backup_id for e in recorded} == {run.id}

    # A failing backup with dead channels fails for its own reason, not because of them.
    gone = client.enqueue_backup("gone", rt=rt).info()
    assert gone["status"] == Status.FAILED and "nope.db does not exist" in gone["error"]
    assert len(webhook_server.json_of("backup of 'gone' failed")) == 1


def test_no_secret_reaches_an_alert(tmp_path, make_config, runtime_for, smtp_server, webhook_server, monkeypatch):
    secret = "hunter2-Sup3r-S3cret"
    hook_password = "hookpass-91x"
    monkeypatch.setenv("BT_ALERT_DB_PASSWORD", secret)
    monkeypatch.setenv("BT_ALERT_API_TOKEN", "tok-" + secret[::-1])
    missing_db = unique("bt_alert_missing")  # never created: pg_dump fails
    hook = webhook_server.url().replace("json://", f"json://alerts:{hook_password}@")
    cfg = make_config(
        f'[targets.school-db]\nkind = "postgres"\nhost = "db01"\n'
        f'dsn = "postgresql://postgres@127.0.0.1:5432/{missing_db}"\npassword = "env:BT_ALERT_DB_PASSWORD"\n',
        settings=alerts_setting(smtp_server.url, hook))
    rt = runtime_for(cfg)

    run = client.enqueue_backup("school-db", rt=rt)
    assert run.status() == Status.FAILED
    # A third-party error that quotes a connection string, password and all, and a token.
    events.emit(rt.catalog, events.CHAIN_FAILED,
                f"pg_dump: could not connect to postgresql://backup:{secret}@db01/school password={secret} "
                f"(token tok-{secret[::-1]})", target="school-db", host="db01", backup_id="school-db-leak")
    # Secrets this host does not know, in the shapes tools and libraries print them.
    unknown = "Xq7-unknown-Secret"
    shapes = [f"password='{unknown}1'", f'password="{unknown}2"', f"{{'password': '{unknown}3'}}", f"PGPASSWORD={unknown}4",
              f"aws_secret_access_key={unknown}5", f"Authorization: Bearer {unknown}6",
              f"postgresql://backup:p@ss{unknown}7@db01/school"]
    events.emit(rt.catalog, events.CHAIN_FAILED, "dump failed; the tool said: " + " | ".join(shapes),
                target="school-db", host="db01", backup_id="school-db-leak2")

    mails = [Mailbox.text(m) + m["Subject"] for m in smtp_server.messages]
    posts = [json.dumps(p["json"]) + json.dumps(p["headers"].get("Authorization", "")) for p in webhook_server.posts]
    assert len(mails) == 3 and len(posts) == 3
    assert f"Run:       {run.id}" in mails[0] and missing_db in mails[0]  # the real failure names its database
    assert "postgresql://backup:***@db01/school password=*** (token ***)" in mails[1]
    assert ("password='***' | password=\"***\" | {'password': '***'} | PGPASSWORD=*** | aws_secret_access_key=*** | "
            "Authorization: Bearer *** | postgresql://backup:***@db01/school") in mails[2]
    for text in mails + posts:
        assert unknown not in text
    for text in mails + [p.split('"Authorization"')[0] for p in posts]:
        assert secret not in text and secret[::-1] not in text and hook_password not in text
    # The webhook itself still authenticates with its password (basic auth), which is the channel's business.
    assert webhook_server.posts[0]["headers"]["Authorization"].startswith("Basic ")


def test_an_event_is_recorded_even_when_its_notifier_breaks(tmp_path, caplog):
    """Alerting sits above the catalog: a notifier that raises must not turn a failure into a crash."""
    catalog = Catalog(f"sqlite:///{tmp_path / 'catalog.db'}")
    heard = []

    def broken(catalog, **event):
        heard.append(event)
        raise RuntimeError("notification plugin crashed")

    previous = events.set_notifier(broken)
    try:
        assert events.emit(catalog, events.CHAIN_FAILED, "dump failed", target="app", backup_id="app-1", stage="dump") is None
        assert heard == [{"kind": events.CHAIN_FAILED, "severity": "error", "message": "dump failed", "target": "app",
                          "host": None, "backup_id": "app-1", "detail": {"stage": "dump"}}]
        assert "could not send the alert for event chain.failed of app-1" in caplog.text
        events.set_notifier(lambda catalog, **event: "the delivery")
        assert events.emit(catalog, events.CHAIN_FAILED, "dump failed again", target="app") == "the delivery"
        events.set_notifier(None)
        assert events.emit(catalog, events.CHAIN_FAILED, "and again", target="app") is None
    finally:
        events.set_notifier(previous)
    assert [e.message for e in catalog.events(kind=events.CHAIN_FAILED)] == ["dump failed", "dump failed again", "and again"]


def test_a_failed_restore_drill_is_mailed(tmp_path, make_config, runtime_for, smtp_server):
    source = unique("bt_alert_drill")
    make_pg_database(source, SMALL_PG)
    try:
        rt = runtime_for(make_config(
            f'[targets.school-db]\nkind = "postgres"\nhost = "db01"\ndsn = "postgresql://postgres@127.0.0.1:5432/{source}"\n'
            'drill = { server = "postgresql://postgres@127.0.0.1:5432/postgres", checks = ["select count(*) = 51 from students"] }\n',
            settings=alerts_setting(smtp_server.url)))
        client.enqueue_backup("school-db", rt=rt).wait(timeout=120)
        from backup_tasks.ops.drill import run_drill

        result = run_drill(rt, "school-db")
        assert result["result"] == "failed"
    finally:
        with pg() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{source}" WITH (FORCE)')
    assert len(smtp_server.messages) == 1
    mail = smtp_server.messages[0]
    assert mail["Subject"] == "[backup-tasks] FAILED: restore drill of 'school-db' failed"
    body = Mailbox.text(mail)
    assert "select count(*) = 51 from students" in body and "Host:      db01" in body
    assert f"Run:       {result['backup_id']}" in body
    assert "Next step: backupctl drill school-db --history" in body


@pytest.mark.parametrize("line, field", [
    ('alerts = ["ops@example.org"]', "alerts"),
    ("size_anomaly_min_percent = 150", "size_anomaly_min_percent"),
    ('report_recipients = ["slack:/nothing"]', "report_recipients"),
])
def test_a_malformed_alert_setting_is_refused_when_the_config_loads(tmp_path, make_config, line, field):
    cfg = make_config(sqlite_target("x", tmp_path / "x.db"), settings=line + "\n")
    done = run_cli("targets", "--json", config=cfg, check=2)
    err = json.loads(done.stdout)["error"]
    assert err["type"] == "ConfigError" and f"field '{field}'" in err["message"] and err["remedy"]


@pytest.mark.parametrize("history", [1, 2])
def test_a_size_history_too_short_for_a_median_is_refused_not_silently_ignored(tmp_path, make_config, history):
    cfg = make_config(sqlite_target("x", tmp_path / "x.db"), settings=f"size_anomaly_history = {history}\n")
    with pytest.raises(ConfigError) as caught:
        config.load(cfg)
    assert "field 'size_anomaly_history'" in str(caught.value) and f"{history} is out of range" in str(caught.value)
    assert "between 3 and 1000" in caught.value.remedy and "at least 3 earlier backups" in caught.value.remedy
    assert config.load(make_config(sqlite_target("x", tmp_path / "x.db"), settings="size_anomaly_history = 3\n"))

