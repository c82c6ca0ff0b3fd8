"""Runbook: Prometheus sees what the catalog knows, and the shipped alert rules watch real metrics.

Real backups (SQLite, and PostgreSQL with a passing restore drill), then ``backupctl
metrics serve`` in its own process is scraped over HTTP and parsed with
prometheus_client's own parser. The rules and the Grafana dashboard in
deploy/monitoring/ are parsed as PromQL and must only use metrics the exporter exposes.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import promql_parser
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from backup_tasks import client, metrics
from backup_tasks.records.catalog import Status
from backup_tasks.ops.drill import run_drill
from databases import make_pg_database, pg, unique
from notify_servers import free_port, wait_for
from test_alerts import SMALL_PG
from test_sqlite_backup import make_app_db

MONITORING = Path(__file__).resolve().parent.parent / "deploy" / "monitoring"


def scrape(url: str) -> dict[str, dict[tuple, float]]:
    """{family: {(sorted label items): value}} from one HTTP scrape."""
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.status == 200
        text = resp.read().decode()
    out: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        samples = out.setdefault(family.name, {})
        for s in family.samples:
            samples[tuple(sorted(s.labels.items()))] = s.value
    return out


@pytest.fixture
def exporter():
    procs = []

    def start(config: Path) -> str:
        port = free_port()
        proc = subprocess.Popen([sys.executable, "-m", "backup_tasks.cli", "metrics", "serve", "--port", str(port),
                                 "--config", str(config)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        procs.append(proc)
        url = f"http://127.0.0.1:{port}/metrics"

        def up():
            if proc.poll() is not None:
                raise AssertionError(f"exporter exited: {proc.stderr.read().decode()}")
            try:
                urllib.request.urlopen(url, timeout=1).close()
                return True
            except OSError:
                return False

        wait_for(up, timeout=30, what="the exporter to listen")
        return url

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(timeout=10)


def test_the_exporter_shows_per_target_facts_after_real_backups_and_a_drill(tmp_path, make_config, runtime_for, exporter):
    db = tmp_path / "app.db"
    make_app_db(db, rows=300)
    source = unique("bt_metrics")
    make_pg_database(source, SMALL_PG)
    try:
        cfg = make_config(
            f'[targets.app]\nkind = "sqlite"\nhost = "app01"\npath = "{db}"\nrpo_hours = 12\n'
            f'[targets.gone]\nkind = "sqlite"\nhost = "app01"\npath = "{tmp_path / "nope.db"}"\n'
            f'[targets.school-db]\nkind = "postgres"\nhost = "db01"\ndsn = "postgresql://postgres@127.0.0.1:5432/{source}"\n'
            'drill = { server = "postgresql://postgres@127.0.0.1:5432/postgres", checks = ["select count(*) = 50 from students"] }\n')
        rt = runtime_for(cfg)
        app_runs = [client.enqueue_backup("app", rt=rt).wait(timeout=60) for _ in range(2)]
        assert client.enqueue_backup("gone", rt=rt).status() == Status.FAILED
        school = client.enqueue_backup("school-db", rt=rt).wait(timeout=120)
        drill = run_drill(rt, "school-db")
        assert drill["result"] == "passed"
    finally:
        with pg() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{source}" WITH (FORCE)')

    url = exporter(cfg)
    m = scrape(url)

    def value(name: str, **labels) -> float:
        return m[name][tuple(sorted(labels.items()))]

    newest = rt.catalog.get(app_runs[-1]["id"])
    assert value("backup_last_success_timestamp_seconds", target="app") == pytest.approx(newest.finished_at.timestamp(), abs=1e-3)
    assert value("backup_last_verified_timestamp_seconds", target="app") == pytest.approx(newest.verified_at.timestamp(), abs=1e-3)
    assert value("backup_last_size_bytes", target="app") == newest.size_stored
    assert value("backup_last_duration_seconds", target="app") == pytest.approx(newest.duration_seconds)
    assert value("backup_rpo_seconds", target="app") == 12 * 3600
    assert value("backup_rpo_compliant", target="app") == 1
    assert 0 <= value("backup_verified_data_age_seconds", target="app") < 600
    assert value("backup_runs", target="app", status="verified") == 2
    assert value("backup_runs", target="app", status="failed") == 0
    assert value("backup_storage_bytes", target="app", tier="local") == sum(r["size_stored"] for r in app_runs)
    assert value("backup_success_ratio", target="app") == 1

    assert value("backup_rpo_compliant", target="gone") == 0  # never verified
    assert value("backup_runs", target="gone", status="failed") == 1
    assert value("backup_success_ratio", target="gone") == 0
    assert ("target", "gone") not in {k[0] for k in m["backup_last_success_timestamp_seconds"]}  # absent, not 0

    drill_row = rt.catalog.drills("school-db")[0]
    assert value("backup_last_drill_passed", target="school-db") == 1
    assert value("backup_last_drill_timestamp_seconds", target="school-db") == pytest.approx(drill_row.finished_at.timestamp(), abs=1e-3)
    assert value("backup_last_drill_restore_seconds", target="school-db") == pytest.approx(drill["restore_seconds"])
    assert value("backup_last_size_bytes", target="school-db") == school["size_stored"]
    assert not any(dict(k).get("target") == "app" for k in m["backup_last_drill_passed"])  # no drills for app
    assert value("backup_catalog_up") == 1

    # Read at scrape time: a new run shows up without restarting the exporter.
    third = client.enqueue_backup("app", rt=rt).wait(timeout=60)
    again = scrape(url)
    assert again["backup_runs"][(("status", "verified"), ("target", "app"))] == 3
    assert again["backup_last_size_bytes"][(("target", "app"),)] == third["size_stored"]
    # Every metric the shipped alert rules use exists in a real scrape.
    assert rule_metric_names() <= set(m)


def promql_metric_names(expr: str) -> set[str]:
    names: set[str] = set()

    def visit(node):
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            names.add(node.name)
        return True

    promql_parser.walk(promql_parser.parse(expr), pre_visit=visit)
    return names


def rule_metric_names() -> set[str]:
    doc = yaml.safe_load((MONITORING / "prometheus-rules.yml").read_text())
    return set().union(*(promql_metric_names(r["expr"]) for g in doc["groups"] for r in g["rules"]))


def test_the_shipped_alert_rules_and_dashboard_use_only_exported_metrics():
    exported = metrics.metric_names()
    doc = yaml.safe_load((MONITORING / "prometheus-rules.yml").read_text())
    rules = {r["alert"]: r for g in doc["groups"] for r in g["rules"]}
    assert {"BackupRPOBreach", "BackupDrillFailed"} <= set(rules)
    for name, rule in rules.items():
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, name
        assert rule["labels"]["severity"] in ("critical", "warning") and rule["annotations"]["summary"], name
        used = promql_metric_names(rule["expr"])  # raises on invalid PromQL
        assert used and used <= exported, (name, used - exported)
    assert promql_metric_names(rules["BackupRPOBreach"]["expr"]) == {"backup_rpo_compliant"}
    assert promql_metric_names(rules["BackupDrillFailed"]["expr"]) == {"backup_last_drill_passed"}

    scrape_config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    assert scrape_config["rule_files"] == ["prometheus-rules.yml"]
    assert "backup-tasks" in {j["job_name"] for j in scrape_config["scrape_configs"]}

    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert len(exprs) >= 8
    for expr in exprs:
        used = promql_metric_names(expr)
        assert used and used <= exported, (expr, used - exported)
    variable = next(v for v in dashboard["templating"]["list"] if v["name"] == "target")
    assert "backup_rpo_seconds" in variable["definition"]


def test_a_port_in_use_is_a_clear_input_error(tmp_path, make_config, exporter):
    cfg = make_config(f'[targets.app]\nkind = "sqlite"\npath = "{tmp_path / "app.db"}"\n')
    url = exporter(cfg)
    port = url.split(":")[2].split("/")[0]
    done = subprocess.run([sys.executable, "-m", "backup_tasks.cli", "metrics", "serve", "--port", port, "--json",
                           "--config", str(cfg)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    err = json.loads(done.stdout)["error"]
    assert err["type"] == "InputError" and f"cannot listen on 127.0.0.1:{port}" in err["message"] and "--port" in err["remedy"]
