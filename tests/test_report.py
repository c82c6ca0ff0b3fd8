"""Runbook: one page that answers "are we recoverable right now?", in the terminal, as JSON, as HTML, by mail.

Real runs (SQLite backups, one of which fails, and a PostgreSQL backup with a restore
drill) feed the report. The HTML page is opened in headless Chromium, which must decode
the three plots; its screenshot is kept under test-artifacts/ for a person to look at.
"""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

from backup_tasks import client
from backup_tasks.policy import readiness
from backup_tasks.ops import report
from backup_tasks.records.catalog import Status
from backup_tasks.ops.drill import run_drill
from backup_tasks.orchestration.monitor_tasks import report as report_task
from conftest import run_cli
from databases import make_pg_database, pg, unique
from notify_servers import smtp_server  # noqa: F401
from test_alerts import SMALL_PG
from test_sqlite_backup import make_app_db

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def history(tmp_path_factory, session_keys):
    """A catalog with a story: app (3 runs, one failed), school-db (verified, drill passed), gone (never worked)."""
    from backup_tasks import config
    from backup_tasks.ops import runtime
    from backup_tasks.orchestration.celery_app import configure
    from conftest import write_config

    base = tmp_path_factory.mktemp("report")
    db = base / "app.db"
    make_app_db(db, rows=400)
    source = unique("bt_report")
    make_pg_database(source, SMALL_PG)
    cfg = write_config(base / "targets.toml", session_keys, targets=(
        f'[targets.app]\nkind = "sqlite"\nhost = "app01"\npath = "{db}"\n'
        f'[targets.school-db]\nkind = "postgres"\nhost = "db01"\ndsn = "postgresql://postgres@127.0.0.1:5432/{source}"\n'
        'drill = { server = "postgresql://postgres@127.0.0.1:5432/postgres", checks = ["select count(*) = 50 from students"] }\n'
        f'[targets.gone]\nkind = "sqlite"\nhost = "app01"\npath = "{base / "nope.db"}"\n'))
    previous = runtime._current
    rt = runtime.install(runtime.Runtime(config.load(cfg)))
    configure(rt.settings)
    try:
        ok = [client.enqueue_backup("app", rt=rt).wait(timeout=60)]
        db.rename(base / "app.db.moved")  # one night the file was not there
        assert client.enqueue_backup("app", rt=rt).status() == Status.FAILED
        (base / "app.db.moved").rename(db)
        ok.append(client.enqueue_backup("app", rt=rt).wait(timeout=60))
        assert client.enqueue_backup("gone", rt=rt).status() == Status.FAILED
        school = client.enqueue_backup("school-db", rt=rt).wait(timeout=120)
        drill = run_drill(rt, "school-db")
        assert drill["result"] == "passed"
    finally:
        runtime._current = previous
        with pg() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{source}" WITH (FORCE)')
    return type("History", (), {"config": cfg, "rt": rt, "app": ok, "school": school, "drill": drill, "base": base})


def test_the_report_answers_per_target_in_json_and_in_a_table(history):
    data = json.loads(run_cli("report", "--json", config=history.config, check=0).stdout)
    by = {t["target"]: t for t in data["targets"]}
    assert data["window_days"] == 30 and data["summary"] == {"targets": 3, "ready": 2, "at_risk": ["gone"]}

    app = by["app"]
    assert app["ready"] is True and app["problems"] == []
    assert app["last_backup"]["id"] == history.app[-1]["id"] and app["last_backup"]["status"] == "verified"
    assert app["last_verify"]["id"] == history.app[-1]["id"]
    assert app["rpo"]["compliant"] is True and app["rpo"]["hours"] == 26
    assert app["success_rate"] == {"window_days": 30, "successes": 2, "attempts": 3, "ratio": 0.6667}
    assert app["storage"] == {"local": sum(r["size_stored"] for r in history.app)}
    assert app["last_drill"] is None

    school = by["school-db"]
    assert school["ready"] is True
    assert school["last_drill"]["result"] == "passed" and school["last_drill"]["backup_id"] == history.school["id"]
    assert school["last_drill"]["rto_seconds"] == pytest.approx(history.drill["restore_seconds"])  # measured RTO

    gone = by["gone"]
    assert gone["ready"] is False and gone["problems"] == ["never had a verified backup"]
    assert gone["last_verify"] is None and gone["rpo"]["compliant"] is False and gone["success_rate"]["ratio"] == 0

    table = run_cli("report", config=history.config, check=0, env={"COLUMNS": "200"}).stdout
    assert "2 of 3 targets ready" in table
    assert re.search(r"│ app\s", table) and re.search(r"│ school-db\s", table) and "breached" in table
    assert "RTO" in table and "67% (2/3)" in table


def test_the_html_report_renders_in_chromium_with_its_plots(history):
    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is needed (make tools installs it: apt-get install chromium)"
    ARTIFACTS.mkdir(exist_ok=True)
    page = ARTIFACTS / "dr-report.html"
    done = run_cli("report", "--html", str(page), "--json", config=history.config, check=0)
    assert json.loads(done.stdout)["html"] == str(page)
    html = page.read_text()

    # Three plots, embedded: real PNGs, with more than one colour in them.
    plots = dict(re.findall(r'<img class="plot" id="(plot-[a-z]+)"[^>]*src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html))
    assert set(plots) == {"plot-size", "plot-duration", "plot-timeline"}
    for name, b64 in plots.items():
        img = Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB")
        assert img.width >= 600 and len(img.getcolors(1 << 20)) > 20, name
    assert "school-db" in html and "never had a verified backup" in html and "RTO" in html
    assert "<script" not in html  # a page that runs nothing

    # The browser decodes each image (naturalWidth > 0): a copy with a probe script, DOM dumped.
    probe = ARTIFACTS / "dr-report-probe.html"
    probe.write_text(html.replace("</body>", "<script>for (const i of document.images) "
                                  "document.body.append(` ${i.id}=${i.naturalWidth}x${i.naturalHeight}`)</script></body>"))
    with tempfile.TemporaryDirectory() as profile:
        dom = subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom", probe.as_uri()],
                             capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    sizes = dict(re.findall(r" (plot-[a-z]+)=(\d+)x\d+", dom.stdout))
    assert set(sizes) == set(plots) and all(int(w) >= 600 for w in sizes.values()), sizes
    probe.unlink()

    # And a person can look at it: the screenshot is kept.
    shot = ARTIFACTS / "dr-report.png"
    shot.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        done = subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--screenshot={shot}",
                               "--window-size=1280,800", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and shot.exists(), done.stderr[-2000:]
    img = Image.open(shot).convert("RGB")
    assert img.size == (1280, 800)
    colours = img.getcolors(1 << 20)
    assert len(colours) > 100  # text, table, the verdict badges, the start of the first plot
    assert max(n for n, _ in colours) < 0.97 * 1280 * 800  # not one colour: something was drawn
    assert any(_near(c, (0xff, 0xeb, 0xee)) for _, c in colours)  # the red "at risk" verdict is visible


def _near(c, ref, tol: int = 6) -> bool:
    return all(abs(a - b) <= tol for a, b in zip(c, ref, strict=True))


def test_the_weekly_report_task_mails_the_html_page(history, smtp_server, tmp_path):
    from backup_tasks import config
    from backup_tasks.ops import runtime
    from backup_tasks.orchestration.celery_app import configure

    text = Path(history.config).read_text().replace("[settings]\n", f'[settings]\nreport_recipients = ["{smtp_server.url}"]\n', 1)
    cfg = tmp_path / "with-recipients.toml"
    cfg.write_text(text)
    previous = runtime._current
    rt = runtime.install(runtime.Runtime(config.load(cfg)))
    configure(rt.settings)
    try:
        result = report_task.delay().get(timeout=120)  # embedded: runs here, as a worker would run it weekly
    finally:
        runtime._current = previous
    assert result["sent"] is True and result["summary"]["at_risk"] == ["gone"]
    [mail] = smtp_server.messages
    assert mail["Subject"] == "[backup-tasks] WARNING: DR readiness report: 2 of 3 targets ready"
    body = mail.get_body(("html",)).get_content()
    assert 'id="plot-timeline"' in body and "school-db" in body
    [attachment] = list(mail.iter_attachments())
    assert attachment.get_filename().startswith("dr-report-") and attachment.get_filename().endswith(".html")
    assert b'id="plot-size"' in attachment.get_payload(decode=True)
    assert not any(p.name.startswith("report-") for p in Path(rt.settings.staging_dir).iterdir())  # temp page removed


def test_the_success_rate_counts_runs_with_an_outcome_not_one_still_being_verified():
    now = datetime(2024, 6, 30, 12, tzinfo=timezone.utc)

    def run(days_ago: float, status: str, *, verified: bool = False, error: str | None = None):
        at = now - timedelta(days=days_ago)
        return SimpleNamespace(created_at=at, status=status, verified_at=at if verified else None, error=error)

    runs = [run(40, "failed"),  # outside the 30 days
            run(20, "deleted", verified=True),  # verified, removed by retention since: a success
            run(10, "deleted"),  # failed, then removed by retention: still a failure
            run(5, "failed"), run(3, "verified", verified=True), run(2, "verified", verified=True),
            run(1, "uploaded", error="verify did not finish: worker lost"),  # verify gave up: no success
            run(0.01, "uploaded"),  # stored a minute ago, its verify is running: no outcome yet
            run(0.001, "running")]
    assert readiness.success_rate(runs, now - timedelta(days=30)) == (3, 6)
    assert readiness.success_rate(runs[4:6] + runs[-2:], now - timedelta(days=30)) == (2, 2)  # 100%, not 67%


def test_size_and_duration_plots_show_only_backups_that_were_stored_and_not_failed():
    at = datetime(2024, 6, 30, tzinfo=timezone.utc)

    def run(name: str, status: str, size: int | None, *, verified: bool = False):
        return SimpleNamespace(id=name, target="app", created_at=at, status=status, size_stored=size, duration_seconds=9.0,
                               verified_at=at if verified else None)

    runs = [run("verified", "verified", 1000, verified=True), run("awaiting-verify", "uploaded", 1000),
            run("kept-then-removed", "deleted", 1000, verified=True),
            run("partial-upload", "failed", 300), run("failed-verify", "failed", 1000),
            run("partial-then-removed", "deleted", 300), run("dump-failed", "failed", None), run("now", "running", None)]
    assert [r.id for r in report.good_stored(runs)] == ["verified", "awaiting-verify", "kept-then-removed"]
