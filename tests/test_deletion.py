"""Runbook: deleting one backup by hand refuses exactly what retention would never remove.

Four nightly backups; a drill proved the first; the last is an incremental on top of
the third. Only the second may go: the others are refused with their reason, nothing
of theirs is touched, and every attempt is in the audit log.
"""

from __future__ import annotations

import sqlite3

import pytest

from backup_tasks import client
from backup_tasks.records.catalog import Status
from backup_tasks.ops.delete import delete_backup, refusals
from backup_tasks.errors import DeleteRefused
from test_sqlite_backup import make_app_db
from s3server import s3_tier_toml


def test_protected_backups_are_refused_with_their_reason_and_the_rest_deleted(tmp_path, make_config, runtime_for):
    make_app_db(tmp_path / "app.db", rows=50)
    rt = runtime_for(make_config(f'[targets.app]\nkind = "sqlite"\npath = "{tmp_path / "app.db"}"\n'))
    b0, b1, b2, b3 = (client.enqueue_backup("app", rt=rt).wait()["id"] for _ in range(4))
    drill = rt.catalog.start_drill("app", b0)
    rt.catalog.finish_drill(drill, result="passed", details={}, restore_seconds=0.1)
    # The pipeline makes full backups only so far: b3 becomes an incremental on b2 in the catalog.
    db = sqlite3.connect(rt.settings.catalog_url.removeprefix("sqlite:///"))
    db.execute("UPDATE backups SET type = 'incremental', parent_id = ? WHERE id = ?", (b2, b3))
    db.commit()
    running = "app-20990101T000000Z-abcdef"
    rt.catalog.create_run(running, target="app", kind="sqlite", type="full", host="localhost", actor="app:test")

    assert refusals(rt, b0) == ["newest drill-proven backup"]
    assert refusals(rt, b2) == [f"parent of incremental backup {b3}, which stays"]
    assert refusals(rt, b3) == ["newest verified backup"]
    assert refusals(rt, running) == ["still running"]
    for protected in (b0, b2, b3, running):
        with pytest.raises(DeleteRefused) as refused:
            delete_backup(rt, protected, actor="cli:alice")
        assert "nothing was deleted" in refused.value.remedy
        assert rt.catalog.get(protected).status != Status.DELETED
    for kept in (b0, b2, b3):
        location = rt.catalog.get(kept).locations[0]
        rt.storage(location.tier).stat(location.key)  # still stored

    result = delete_backup(rt, b1, actor="cli:alice")
    assert result["status"] == "deleted" and [r["tier"] for r in result["removed"]] == ["local"]
    assert not list(rt.storage("local").list(f"app/{b1}/"))  # artifact, manifest and verified marker gone
    assert rt.catalog.get(b1).status == Status.DELETED and rt.catalog.get(b1).locations == []

    audit = [(e.backup_id, e.outcome) for e in reversed(rt.catalog.audit(action="delete"))]
    assert audit == [(b0, "refused"), (b2, "refused"), (b3, "refused"), (running, "refused"), (b1, "ok")]
    assert rt.catalog.audit(action="delete")[-1].detail["reasons"] == ["newest drill-proven backup"]


def test_an_object_locked_copy_refuses_the_whole_delete(tmp_path, make_config, runtime_for, s3_server, s3_env):
    bucket = s3_server.make_bucket(object_lock=True)
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "f.txt").write_text("locked away\n")
    cfg = make_config(f'[targets.t]\nkind = "files"\npaths = ["{tree}"]\nstorage = ["local", "offsite"]\n',
                      tiers=f'[tiers.local]\nkind = "local"\npath = "{tmp_path / "store"}"\n'
                            + s3_tier_toml(s3_server, bucket, max_age_days=2, object_lock="compliance"))
    rt = runtime_for(cfg)
    older, _ = (client.enqueue_backup("t", rt=rt).wait()["id"] for _ in range(2))

    with pytest.raises(DeleteRefused) as refused:
        delete_backup(rt, older, actor="api:ops")
    assert "object-locked on tier 'offsite' until " in refused.value.message
    assert {loc.tier for loc in rt.catalog.get(older).locations} == {"local", "offsite"}  # not even the local copy went
    rt.storage("local").stat(rt.catalog.get(older).locations[0].key)


def test_a_copy_on_a_tier_no_longer_configured_refuses_the_delete_before_anything_is_removed(tmp_path, make_config,
                                                                                            runtime_for):
    make_app_db(tmp_path / "app.db", rows=50)
    target = f'[targets.app]\nkind = "sqlite"\npath = "{tmp_path / "app.db"}"\nstorage = ["local", "usb"]\n'
    both = (f'[tiers.local]\nkind = "local"\npath = "{tmp_path / "state" / "store"}"\n'
            f'[tiers.usb]\nkind = "local"\npath = "{tmp_path / "usb"}"\n')
    rt = runtime_for(make_config(target, tiers=both))
    older, _newer = (client.enqueue_backup("app", rt=rt).wait()["id"] for _ in range(2))
    # The usb tier is retired from the config; its copies stay where they are.
    rt = runtime_for(make_config(target.replace(', "usb"', ""),
                                 tiers=f'[tiers.local]\nkind = "local"\npath = "{tmp_path / "state" / "store"}"\n'))

    assert refusals(rt, older) == ["has a copy on tier 'usb', which is no longer configured (add the tier back to delete it)"]
    with pytest.raises(DeleteRefused):
        delete_backup(rt, older, actor="cli:alice")
    assert {loc.tier for loc in rt.catalog.get(older).locations} == {"local", "usb"}
    assert list(rt.storage("local").list(f"app/{older}/")) and list((tmp_path / "usb" / "app" / older).iterdir())
