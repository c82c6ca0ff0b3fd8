"""Beat entries and worker queues come from the targets file, and carry target names only."""

from __future__ import annotations

import beat_schedule
from backup_tasks import config
from conftest import write_config
from workers.launch import argv_for, queues_for

TARGETS = ('[targets.db]\nkind = "sqlite"\nhost = "db01"\npath = "/srv/db.sqlite"\n'
           '[targets.uploads]\nkind = "files"\nhost = "app01"\npaths = ["/srv/uploads"]\nschedule = "30 4 * * 1-5"\n')


def test_beat_publishes_each_target_at_its_cron_on_its_host_queue(tmp_path, session_keys):
    cfg = config.load(write_config(tmp_path / "t.toml", session_keys, targets=TARGETS), environ={})
    entries = beat_schedule.build(cfg)
    assert set(entries) == {"backup:db", "backup:uploads", "cleanup"}
    assert entries["cleanup"]["task"] == "backup.cleanup" and entries["cleanup"]["options"] == {"queue": "maintenance"}
    assert (entries["cleanup"]["schedule"].minute, entries["cleanup"]["schedule"].hour) == ({0}, {3})
    db = entries["backup:db"]
    assert db["task"] == "backup.start" and db["args"] == ("db", "full") and db["options"] == {"queue": "host.db01"}
    # 02:00 daily by default for databases
    assert (db["schedule"].minute, db["schedule"].hour, db["schedule"].day_of_week) == ({0}, {2}, set(range(7)))
    assert entries["backup:uploads"]["schedule"].hour == {4} and entries["backup:uploads"]["schedule"].day_of_week == {1, 2, 3, 4, 5}


def test_a_worker_subscribes_to_its_host_and_to_verify_only_with_identities(tmp_path, session_keys):
    cfg = config.load(write_config(tmp_path / "t.toml", session_keys, targets=TARGETS), environ={})
    assert queues_for(cfg, "app01") == ["host.app01", "verify", "maintenance"]
    assert queues_for(cfg, "nobody") == ["verify", "maintenance"]
    no_identities = config.load(write_config(tmp_path / "u.toml", None, targets=TARGETS), environ={})
    assert queues_for(no_identities, "db01") == ["host.db01", "maintenance"]
    argv = argv_for(cfg, "db01", 2)
    assert argv[argv.index("-Q") + 1] == "host.db01,verify,maintenance" and "db01@%h" in argv
