"""Runbook: what an operator sees when things are not set up right: no worker, a full disk, a narrow screen.

Each case is the real thing: a queue nobody consumes on the real Redis, a staging
directory on a 1 MiB tmpfs, ``backupctl list`` in a pipe and in an 80-column terminal.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import run_cli
from test_sqlite_backup import make_app_db


def test_waiting_on_a_queue_no_worker_consumes_says_so_and_how_to_start_one(tmp_path, make_config, redis_url, start_worker):
    db = tmp_path / "app.db"
    make_app_db(db, rows=5)
    cfg = make_config(f'[targets.lost]\nkind = "sqlite"\nhost = "nowhere"\npath = "{db}"\n'
                      f'[targets.half]\nkind = "sqlite"\nhost = "elsewhere"\npath = "{db}"\n')
    start_worker(cfg, redis_url, ["host.elsewhere"], name="w1@elsewhere")  # a worker, but for another host and no verify

    done = run_cli("backup", "lost", "--wait", "--timeout", "6", config=cfg, env={"BACKUP_BROKER_URL": redis_url})
    assert done.returncode == 2, done.stdout + done.stderr  # still queued when --timeout ran out
    assert "no worker consumes host.nowhere" in done.stderr, done.stderr
    assert "celery -A backup_tasks worker -Q host.nowhere" in done.stderr  # the command to start one
    assert done.stderr.count("no worker consumes") == 1  # said once, not on every poll

    # Dumped and stored by the host's worker, then waiting for a verify worker that does not exist.
    done = run_cli("backup", "half", "--wait", "--timeout", "9", config=cfg, env={"BACKUP_BROKER_URL": redis_url})
    assert done.returncode == 2, done.stdout + done.stderr
    assert "no worker consumes verify" in done.stderr and "no worker consumes host" not in done.stderr, done.stderr
    assert "celery -A backup_tasks worker -Q verify\n" in done.stderr


def test_a_full_staging_disk_names_the_directory_and_the_remedy(tmp_path, make_config):
    state = tmp_path / "state"
    staging = state / "staging"
    staging.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(staging)], check=True)
    try:
        tree = tmp_path / "data"
        tree.mkdir()
        (tree / "big.bin").write_bytes(os.urandom(3 << 20))  # three times what the staging disk holds
        cfg = make_config(f'[targets.bulk]\nkind = "files"\npaths = ["{tree}"]\n', state=state)
        done = run_cli("backup", "bulk", "--wait", "--json", config=cfg, check=1)
        error = json.loads(done.stdout)["error"]
        assert "Errno" not in error, error
        assert f"no space left in the staging directory {staging}" in error
        assert "staging_dir" in error and "BACKUP_STAGING_DIR" in error  # the remedy
        assert list(staging.iterdir()) == []  # the run's partial files were removed
    finally:
        subprocess.run(["umount", str(staging)], check=True)


def test_list_never_cuts_an_id_in_a_pipe_or_on_an_80_column_terminal(tmp_path, make_config):
    db = tmp_path / "app.db"
    make_app_db(db, rows=5)
    name = "school-database-primary-replica"
    cfg = make_config(f'[targets.{name}]\nkind = "sqlite"\npath = "{db}"\n')
    backup_id = json.loads(run_cli("backup", name, "--json", config=cfg, check=0).stdout)["id"]
    assert len(backup_id) > 50

    piped = run_cli("list", config=cfg, env={"COLUMNS": "80"}, check=0).stdout
    assert backup_id in piped and "…" not in piped
    assert "verified" in piped and "local" in piped  # every column is there, nothing folded

    # A real terminal of 80 columns (a pty under script(1)): the id stays whole, less important columns give way.
    shown = subprocess.run(["script", "-qec", f"{sys.executable} -m backup_tasks.cli list --config {cfg}", "/dev/null"],
                           capture_output=True, text=True, env={**os.environ, "COLUMNS": "80", "LINES": "40", "TERM": "xterm"},
                           timeout=60).stdout
    assert backup_id in shown and name in shown, shown
