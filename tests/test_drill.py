"""Runbook: the weekly restore drill, and the ways it must fail loudly.

Each drill restores a real backup into a temporary database on a real server, compares
every table's row count with the manifest and runs health-check SQL; whatever happens,
the temporary database is gone afterwards, the drill is in the catalog, and a failure
emits a ``drill.failed`` event.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from backup_tasks import client, config
from backup_tasks.records import manifest
from backup_tasks.ops import runtime
from backup_tasks.records.catalog import Status
from backup_tasks.ops.drill import run_drill
from conftest import run_cli, write_config
from databases import free_port, make_my_database, make_pg_database, my, my_databases, pg, pg_databases, unique  # noqa: F401

DRILL_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"
CHECKS = '["select count(*) = 204 from customers", "select exists (select 1 from big_orders)"]'


def pg_drill_target(name: str, database: str, *, server: str = DRILL_SERVER, checks: str = CHECKS) -> str:
    return (f'[targets.{name}]\nkind = "postgres"\ndsn = "postgresql://postgres@127.0.0.1:5432/{database}"\n'
            f'drill = {{ server = "{server}", checks = {checks} }}\n')


def drill_dbs(target: str) -> list[str]:
    return pg_databases(f"drill_{target.replace('-', '_')}_")


@pytest.fixture(scope="module")
def drills(tmp_path_factory, session_keys):
    """One source database; targets that differ only in their drill settings, each with a verified backup."""
    source = unique("bt_drillsrc")
    make_pg_database(source)
    base = tmp_path_factory.mktemp("drill")
    targets = "\n".join([
        pg_drill_target("ok-db", source),
        pg_drill_target("false-check", source, checks='["select count(*) > 1000000 from customers", "select 1"]'),
        pg_drill_target("server-down", source, server=f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"),
        pg_drill_target("tampered", source),
        pg_drill_target("never-backed-up", source),
        pg_drill_target("too-slow", source).replace("checks = ", "timeout_seconds = 0.01, checks = "),
    ])
    path = write_config(base / "targets.toml", session_keys, targets=targets)
    rt = runtime.Runtime(config.load(path))
    previous = runtime._current
    runtime.install(rt)
    ids = {}
    for name in ("ok-db", "false-check", "server-down", "tampered", "too-slow"):
        run = client.enqueue_backup(name, rt=rt)
        assert run.info()["status"] == Status.VERIFIED
        ids[name] = run.id
    runtime._current = previous
    yield SimpleNamespace(config=path, rt=rt, ids=ids, source=source, state=base / "state", targets=targets)
    with pg() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{source}" WITH (FORCE)')


def test_drill_restores_compares_checks_records_and_drops(drills):
    stale = "drill_ok_db_20200101T000000_abcdef"  # left behind by a worker that was killed mid-drill
    with pg() as cur:
        cur.execute(f'CREATE DATABASE "{stale}"')
    done = run_cli("drill", "ok-db", "--json", config=drills.config, check=0)
    result = json.loads(done.stdout)
    assert result["result"] == "passed" and result["backup_id"] == drills.ids["ok-db"]
    assert result["temp_database"].startswith("drill_ok_db_") and result["temp_database_dropped"] is True
    assert drill_dbs("ok-db") == []  # neither this drill's database nor the stale one is left
    assert result["swept"] == [stale]
    tables = result["tables"]
    assert tables["manifest"] == tables["restored"] == 5 and tables["rows_manifest"] == tables["rows_restored"]
    assert tables["missing"] == tables["extra"] == [] and tables["count_mismatches"] == {}
    assert [c["passed"] for c in result["checks"]] == [True, True]
    assert result["restore_seconds"] > 0  # RTO evidence

    rt = drills.rt
    assert rt.catalog.latest_drill_passed("ok-db") == drills.ids["ok-db"]
    row = rt.catalog.drills("ok-db")[0]
    assert row.result == "passed" and row.restore_seconds == result["restore_seconds"] and row.finished_at is not None
    history = json.loads(run_cli("drill", "ok-db", "--history", "--json", config=drills.config, check=0).stdout)
    assert history[0]["drill_id"] == result["drill_id"] and history[0]["result"] == "passed"


def test_the_drill_proven_backup_survives_losing_the_catalog(drills, tmp_path, session_keys):
    result = json.loads(run_cli("drill", "ok-db", "--json", config=drills.config, check=0).stdout)
    backup_id = result["backup_id"]
    marker = drills.state / "store" / manifest.drilled_key("ok-db", backup_id)
    assert json.loads(marker.read_text())["restore_seconds"] == result["restore_seconds"]

    # The catalog is lost: a new one, rebuilt from the same storage, knows the drill-proven backup.
    fresh = write_config(tmp_path / "targets.toml", session_keys, targets=drills.targets,
                         tiers=f'[tiers.local]\nkind = "local"\npath = "{drills.state / "store"}"\n')
    rebuilt = json.loads(run_cli("catalog", "rebuild", "--json", config=fresh, check=0).stdout)
    assert rebuilt["drills_restored"] >= 1
    rt = runtime.Runtime(config.load(fresh))
    assert rt.catalog.latest_drill_passed("ok-db") == backup_id
    plan = json.loads(run_cli("cleanup", "--target", "ok-db", "--dry-run", "--json", config=fresh, check=0).stdout)
    assert any(d["backup_id"] == backup_id and d["action"] == "keep" for d in plan["decisions"])


def _assert_failed(drills, target: str, step: str, result: dict) -> None:
    assert result["result"] == "failed" and result["failed_step"] == step, result
    assert drill_dbs(target) == []
    assert drills.rt.catalog.drills(target)[0].result == "failed"
    assert drills.rt.catalog.latest_drill_passed(target) is None
    events = [e for e in drills.rt.catalog.events(kind="drill.failed") if e.target == target]
    assert events and events[-1].detail["step"] == step and events[-1].detail["remedy"]


def test_a_health_check_that_is_not_true_fails_the_drill(drills):
    done = run_cli("drill", "false-check", "--json", config=drills.config, check=1)
    result = json.loads(done.stdout)
    _assert_failed(drills, "false-check", "checks", result)
    assert [c["passed"] for c in result["checks"]] == [False, True]
    assert result["checks"][0]["value"] is False
    assert result["tables"]["count_mismatches"] == {}  # the restore itself was fine


def test_a_tampered_artifact_fails_the_drill(drills):
    artifact = next((drills.state / "store" / "tampered").rglob("data.pgdump.zst.age"))
    data = bytearray(artifact.read_bytes())
    data[len(data) // 2] ^= 0x01
    artifact.write_bytes(bytes(data))
    result = run_drill(drills.rt, "tampered")
    _assert_failed(drills, "tampered", "restore", result)
    assert result["restore_seconds"] is None


def test_a_drill_server_that_is_down_fails_the_drill(drills):
    result = run_drill(drills.rt, "server-down")
    _assert_failed(drills, "server-down", "connect", result)
    assert "unreachable" in result["error"]


def test_a_drill_past_its_time_limit_is_stopped_failed_and_cleaned_up(drills):
    result = run_drill(drills.rt, "too-slow")
    _assert_failed(drills, "too-slow", "timeout", result)
    assert result["temp_database_dropped"] is True


def test_no_verified_backup_is_a_failed_drill(drills):
    result = run_drill(drills.rt, "never-backed-up")
    _assert_failed(drills, "never-backed-up", "select", result)
    assert result["backup_id"] is None


def test_drill_config_errors_are_bad_input(tmp_path, session_keys):
    path = write_config(tmp_path / "t.toml", session_keys,
                        targets='[targets.nodrill]\nkind = "postgres"\ndsn = "postgresql://postgres@127.0.0.1/x"\n'
                                '[targets.files]\nkind = "files"\npaths = ["/tmp"]\n')
    assert "no drill server" in json.loads(run_cli("drill", "nodrill", "--json", config=path, check=2).stdout)["error"]["message"]
    assert "drills restore postgres and mysql" in json.loads(run_cli("drill", "files", "--json", config=path, check=2).stdout)["error"]["message"]


def test_mysql_drill_passes_and_fails_on_its_checks(tmp_path, session_keys, runtime_for):
    source = unique("bt_mydrill")
    make_my_database(source, rows=500)
    try:
        targets = "\n".join(
            f'[targets.{name}]\nkind = "mysql"\ndsn = "mysql://root@127.0.0.1:3306/{source}"\n'
            f'drill = {{ server = "mysql://root@127.0.0.1:3306", checks = {checks} }}\n'
            for name, checks in (("shop-ok", '["select count(*) = 204 from customers", "select order_total(2) > 0"]'),
                                 ("shop-bad", '["select count(*) = 0 from customers"]')))
        rt = runtime_for(write_config(tmp_path / "t.toml", session_keys, targets=targets))
        for name in ("shop-ok", "shop-bad"):
            assert client.enqueue_backup(name, rt=rt).info()["status"] == Status.VERIFIED
        ok = run_drill(rt, "shop-ok")
        assert ok["result"] == "passed", ok
        assert ok["tables"]["restored"] == 4 and ok["tables"]["rows_restored"] == ok["tables"]["rows_manifest"]
        bad = run_drill(rt, "shop-bad")
        assert bad["result"] == "failed" and bad["failed_step"] == "checks" and bad["checks"][0]["value"] == 0
        assert my_databases("drill_shop") == []
        assert rt.catalog.latest_drill_passed("shop-ok") == ok["backup_id"] and rt.catalog.latest_drill_passed("shop-bad") is None
    finally:
        with my() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{source}`")


def test_drill_task_runs_on_the_drill_queue_of_a_real_worker(drills, redis_url, start_worker, tmp_path, session_keys):
    """backupctl drill with a broker: the backup.drill task runs on a worker subscribed to 'drill' only."""
    path = write_config(tmp_path / "dist.toml", session_keys, settings=f'broker_url = "{redis_url}"\n',
                        targets=pg_drill_target("ok-db", drills.source), state=drills.state)
    worker = start_worker(path, redis_url, ["drill"], name="drill1@localhost")
    done = run_cli("drill", "ok-db", "--json", "--timeout", "120", config=path, check=0)
    result = json.loads(done.stdout)
    assert result["result"] == "passed" and drill_dbs("ok-db") == []
    assert "backup.drill" in worker.log.read_text()
