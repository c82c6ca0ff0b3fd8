"""Beat entries and worker queues come from the targets file, and carry target names only."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest
from celery.schedules import crontab

import beat_schedule
from backup_tasks import config, defaults
from backup_tasks.config import schedules
from backup_tasks.errors import ConfigError, InputError
from backup_tasks.orchestration import config_reload
from backup_tasks.orchestration.routing import route
from conftest import write_config
from workers.launch import argv_for, concurrency_for, queues_for

TARGETS = ('[targets.db]\nkind = "sqlite"\nhost = "db01"\npath = "/srv/db.sqlite"\n'
           '[targets.uploads]\nkind = "files"\nhost = "app01"\npaths = ["/srv/uploads"]\nschedule = "30 4 * * 1-5"\n'
           '[targets.etc]\nkind = "files"\nhost = "app01"\npaths = ["/etc"]\n'
           '[targets.often]\nkind = "files"\nhost = "app01"\npaths = ["/srv/often"]\nschedule = "@every 90m"\n')


def _load(tmp_path, session_keys, *, targets=TARGETS, settings="", keys=True):
    return config.load(write_config(tmp_path / "t.toml", session_keys if keys else None, targets=targets, settings=settings),
                       environ={})


def test_beat_publishes_each_target_at_its_cron_on_its_host_queue(tmp_path, session_keys):
    entries = beat_schedule.build(_load(tmp_path, session_keys))
    assert set(entries) == {"backup:db", "backup:uploads", "backup:etc", "backup:often",
                            "cleanup", "verify-pending", "reverify", "drills", "rpo-watchdog", "dr-report",
                            "reencrypt-after-lock"}
    db = entries["backup:db"]
    assert db["task"] == "backup.start" and db["args"] == ("db", "full") and db["options"] == {"queue": "host.db01"}
    assert db["kwargs"] == {"actor": "beat"}
    # defaults by kind: databases daily 02:00, files Sunday 03:00
    assert (db["schedule"].minute, db["schedule"].hour, db["schedule"].day_of_week) == ({0}, {2}, set(range(7)))
    etc = entries["backup:etc"]["schedule"]
    assert (etc.minute, etc.hour, etc.day_of_week) == ({0}, {3}, {0})
    assert entries["backup:uploads"]["schedule"].hour == {4} and entries["backup:uploads"]["schedule"].day_of_week == {1, 2, 3, 4, 5}
    assert entries["backup:often"]["schedule"].run_every == timedelta(minutes=90)


def test_the_global_jobs_run_at_their_times_on_their_queues(tmp_path, session_keys):
    entries = beat_schedule.build(_load(tmp_path, session_keys, settings='timezone = "Europe/Berlin"\n'))

    def at(name):
        s = entries[name]["schedule"]
        return entries[name]["task"], s.minute, s.hour, s.day_of_week, entries[name]["options"]["queue"]

    every_day = set(range(7))
    assert at("cleanup") == ("backup.cleanup", {0}, {3}, every_day, "maintenance")
    assert at("verify-pending") == ("backup.verify_pending", {0}, {4}, every_day, "verify")
    assert at("reverify") == ("backup.reverify", {30}, {4}, every_day, "maintenance")
    assert at("drills") == ("backup.drill_due", {30}, {3}, {0}, "maintenance")
    assert at("rpo-watchdog") == ("backup.watchdog", {0, 15, 30, 45}, set(range(24)), every_day, "maintenance")
    assert at("dr-report") == ("backup.report", {0}, {7}, {1}, "maintenance")
    assert at("reencrypt-after-lock") == ("backup.reencrypt_unlocked", {45}, {4}, every_day, "maintenance")
    assert entries["reverify"]["kwargs"] == {"every_hours": 24.0}
    assert str(entries["cleanup"]["schedule"].tz) == "Europe/Berlin"
    # The publishing side routes the same way when a task is sent without an explicit queue.
    assert route("backup.verify_pending", (), {}, {}) == {"queue": "verify"}
    assert route("backup.watchdog", (), {}, {}) == {"queue": "maintenance"}
    assert route("backup.drill", ("db",), {}, {}) == {"queue": "drill"}


def test_a_backup_goes_to_its_hosts_queue_and_an_unknown_target_to_maintenance(tmp_path, session_keys, runtime_for, caplog):
    runtime_for(write_config(tmp_path / "t.toml", session_keys, targets=TARGETS))
    assert route("backup.start", ("db", "full"), {}, {}) == {"queue": "host.db01"}
    assert route("backup.start", (), {"target": "uploads"}, {}) == {"queue": "host.app01"}
    with caplog.at_level(logging.WARNING, logger="backup_tasks.orchestration.routing"):
        assert route("backup.start", ("nope",), {}, {}) == {"queue": "maintenance"}  # the start task then fails the run
    assert "unknown target 'nope'" in caplog.text


def test_a_worker_keeps_its_targets_while_the_file_is_gone_and_reloads_it_when_it_is_back(tmp_path, session_keys, runtime_for,
                                                                                          monkeypatch, caplog):
    path = write_config(tmp_path / "t.toml", session_keys, targets=TARGETS)
    monkeypatch.setenv("BACKUP_CONFIG", str(path))  # what a worker runs on
    runtime_for(path)
    rt = config_reload.fresh()
    assert config_reload.fresh() is rt
    text = path.read_text()
    path.unlink()  # e.g. the share holding it is unmounted
    with caplog.at_level(logging.WARNING, logger="backup_tasks.orchestration.config_reload"):
        assert config_reload.fresh() is rt and config_reload.fresh() is rt
    assert [r.getMessage() for r in caplog.records].count(
        f"the targets file {path} cannot be read (No such file or directory); keeping the configuration in force") == 1
    path.write_text(text + '[targets.added]\nkind = "files"\nhost = "app01"\npaths = ["/srv/added"]\n')
    back = config_reload.fresh()
    assert back is not rt and "added" in back.config.targets


@pytest.mark.parametrize("expr, message", [
    ("0 2 * *", "expected 5 fields"),
    ("61 2 * * *", "invalid cron"),
    ("@every 0s", "at least 1s"),
    ("@hourly", "the only @ form"),
    ("@every 5 minutes", "the only @ form"),
])
def test_a_bad_schedule_is_refused_when_the_file_is_loaded(tmp_path, session_keys, expr, message):
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, session_keys, targets=f'[targets.t]\nkind = "files"\npaths = ["/srv"]\nschedule = "{expr}"\n')
    assert "target 't'" in str(err.value) and "schedule" in str(err.value) and message in str(err.value)


@pytest.mark.parametrize("expr", [defaults.SCHEDULE, *defaults.SCHEDULE_BY_KIND.values()])
def test_the_default_schedules_are_valid_cron(expr):
    # The loader checks only the schedules a targets file writes (checking ours would import Celery
    # in every command's start-up), so the defaults are checked here, with beat's parser.
    assert isinstance(schedules.parse(expr), crontab)  # parse raises ValueError on a bad one


@pytest.mark.parametrize("settings, field, message", [
    ('timezone = "Mars/Olympus"\n', "timezone", "unknown timezone"),
    ("beat_lock_timeout = 6\nbeat_max_loop_interval = 5\n", "beat_max_loop_interval", "at most half"),
    ("stage_soft_time_limits = { dump = 100 }\nstage_hard_time_limits = { dump = 100 }\n", "stage_hard_time_limits.dump", "must exceed"),
    ("stage_hard_time_limits = { upload = 30000 }\n", "stage_hard_time_limits.upload", "below broker_visibility_timeout"),
    ("stage_soft_time_limits = { zip = 10 }\n", "stage_soft_time_limits.zip", "unknown stage"),
    ("run_lock_ttl = 0\n", "run_lock_ttl", "at least 1"),
])
def test_distributed_settings_are_checked_with_the_field_named(tmp_path, session_keys, settings, field, message):
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, session_keys, settings=settings)
    assert f"field '{field}'" in str(err.value) and message in str(err.value)


def test_time_limits_and_retries_come_from_settings_and_the_environment(tmp_path, session_keys):
    path = write_config(tmp_path / "t.toml", session_keys, targets=TARGETS,
                        settings="stage_soft_time_limits = { dump = 600 }\nstage_hard_time_limits = { dump = 660 }\n")
    cfg = config.load(path, environ={"BACKUP_STAGE_SOFT_TIME_LIMITS": "upload=100,verify=200", "BACKUP_TASK_MAX_RETRIES": "2"})
    s = cfg.settings
    assert s.time_limits("upload") == (100, 5 * 3600 + 1800)  # the environment replaces the table
    assert s.time_limits("verify") == (200, 5 * 3600 + 1800)
    assert s.time_limits("dump") == (594, 660)  # a hard limit alone brings the soft one down to 90% of it
    assert s.task_max_retries == 2
    assert config.load(path, environ={}).settings.time_limits("dump") == (600, 660)


def test_a_worker_subscribes_to_its_host_and_to_verify_only_with_identities(tmp_path, session_keys):
    cfg = _load(tmp_path, session_keys)
    assert queues_for(cfg, "app01") == ["host.app01", "verify", "maintenance"]
    assert queues_for(cfg, "nobody") == ["verify", "maintenance"]
    assert queues_for(cfg, "app01", drill=True, maintenance=False) == ["host.app01", "verify", "drill"]
    no_identities = config.load(write_config(tmp_path / "u.toml", None, targets=TARGETS), environ={})
    assert queues_for(no_identities, "db01") == ["host.db01", "maintenance"]
    assert queues_for(no_identities, "db01", drill=True) == ["host.db01", "maintenance"]  # a drill needs identities
    argv = argv_for(cfg, "db01", 2)
    assert argv[argv.index("-Q") + 1] == "host.db01,verify,maintenance" and "db01@%h" in argv
    assert argv[argv.index("-c") + 1] == "2" and argv[argv.index("-P") + 1] == "prefork"
    with pytest.raises(InputError, match="nothing to consume"):
        argv_for(no_identities, "nobody", 1, maintenance=False)


def test_worker_concurrency_comes_from_the_flag_then_settings_then_the_cores(tmp_path, session_keys):
    import os

    assert concurrency_for(_load(tmp_path, session_keys, settings="worker_concurrency = 3\n"), 5) == 5
    assert concurrency_for(_load(tmp_path, session_keys, settings="worker_concurrency = 3\n")) == 3
    assert concurrency_for(_load(tmp_path, session_keys)) == max(4, (os.cpu_count() or 2) // 2)  # a chain's four stages at once
