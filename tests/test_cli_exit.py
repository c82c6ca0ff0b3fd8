"""The backupctl script ends with os._exit, skipping the interpreter's teardown: what a user sees must not change.

Every command here is the installed script as pip writes it from pyproject.toml (or
``python -m backup_tasks.cli``), in a process of its own: exit codes, a large JSON
document read whole from a pipe, the SQLite catalog left without a pending write-ahead
log, and a reader that went away before the command wrote.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FILES = 3000  # enough for `show --files --json` to be ~1.4 MB, far more than a pipe holds


@pytest.fixture
def script(tmp_path) -> Path:
    """The console script as pip generates it from the entry point pyproject.toml names."""
    target = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]["backupctl"]
    module, function = target.split(":")
    path = tmp_path / "backupctl"
    path.write_text(f"#!{sys.executable}\nimport sys\nfrom {module} import {function}\n"
                    f"if __name__ == '__main__':\n    sys.argv[0] = sys.argv[0].removesuffix('.exe')\n    sys.exit({function}())\n")
    path.chmod(0o755)
    return path


@pytest.fixture
def setup(tmp_path, make_config):
    tree = tmp_path / "tree"
    tree.mkdir()
    for i in range(FILES):
        (tree / f"file-{i:05}.txt").write_text(f"{i}\n")
    cfg = make_config(f'[targets.site]\nkind = "files"\npaths = ["{tree}"]\n'
                      f'[targets.gone]\nkind = "sqlite"\npath = "{tmp_path / "missing.db"}"\n')
    return cfg, tmp_path / "state" / "catalog.db"


def backupctl(script: Path, *args: str, cfg: Path | None = None, stdout=subprocess.PIPE) -> subprocess.CompletedProcess:
    argv = [str(script), *args, *(["--config", str(cfg)] if cfg else [])]
    return subprocess.run(argv, stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=300)


def test_exit_codes_output_and_catalog_are_those_of_a_normal_exit(script, setup):
    cfg, catalog = setup

    done = backupctl(script, "backup", "site", "--wait", "--json", cfg=cfg)
    assert done.returncode == 0, done.stderr
    run = json.loads(done.stdout)
    assert run["status"] == "verified"
    # The catalog's connections were closed: SQLite checkpointed and removed its write-ahead log.
    wal = catalog.with_name(catalog.name + "-wal")
    assert not wal.exists() or wal.stat().st_size == 0
    assert [r["status"] for r in json.loads(backupctl(script, "list", "--json", cfg=cfg).stdout) if r["id"] == run["id"]] == ["verified"]

    # 1.4 MB of JSON through a pipe, delivered whole before the process ended.
    shown = backupctl(script, "show", run["id"], "--files", "--json", cfg=cfg)
    assert shown.returncode == 0 and len(shown.stdout) > 1_000_000
    assert sum(f["type"] == "file" for f in json.loads(shown.stdout)["files"]) == FILES

    failed = backupctl(script, "backup", "gone", "--wait", "--json", cfg=cfg)  # its database does not exist
    assert failed.returncode == 1 and json.loads(failed.stdout)["status"] == "failed"
    assert {r["target"]: r["status"] for r in json.loads(backupctl(script, "list", "--json", cfg=cfg).stdout)}["gone"] == "failed"

    usage = backupctl(script, "no-such-command", "--json")
    assert usage.returncode == 2 and json.loads(usage.stdout)["error"]["exit_code"] == 2
    assert backupctl(script, "--version").returncode == 0

    down = cfg.with_name("down.toml")
    down.write_text(cfg.read_text().replace(f'catalog_url = "sqlite:///{catalog}"', 'catalog_url = "postgresql+psycopg2://postgres@127.0.0.1:1/catalog"'))
    unreachable = backupctl(script, "list", "--json", cfg=down)
    assert unreachable.returncode == 3 and "Traceback" not in unreachable.stderr

    # python -m backup_tasks.cli is the same script.
    same = subprocess.run([sys.executable, "-m", "backup_tasks.cli", "show", "nope", "--json", "--config", str(cfg)],
                          capture_output=True, text=True, timeout=120)
    assert same.returncode == 2 and json.loads(same.stdout)["error"]["type"] == "InputError"


def test_a_reader_that_went_away_gets_an_exit_code_and_no_traceback(script, setup):
    cfg, _ = setup
    run = json.loads(backupctl(script, "backup", "site", "--wait", "--json", cfg=cfg).stdout)

    # `backupctl ... | true`: the pipe is closed before the command writes a byte.
    for args, code in ((["list"], 1), (["show", run["id"], "--files", "--json"], 1), (["show", "nope", "--json"], 2)):
        proc = subprocess.Popen([str(script), *args, "--config", str(cfg)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        proc.stdout.close()
        err = proc.stderr.read().decode()
        assert proc.wait(timeout=120) == code, (args, err)
        assert "Traceback" not in err and "Exception ignored" not in err, (args, err)

    # `backupctl ... | head -1`, as a shell runs it.
    piped = subprocess.run(["sh", "-c", f'"{script}" show {run["id"]} --files --config "{cfg}" | head -1'], capture_output=True,
                           text=True, timeout=120, env=dict(os.environ))
    assert piped.returncode == 0 and piped.stdout.strip() == "{", piped.stderr
    assert "Traceback" not in piped.stderr and "Exception ignored" not in piped.stderr


def test_start_up_collects_rarely_until_the_command_has_its_runtime():
    from backup_tasks.cli import startup_gc

    before, frozen = gc.get_threshold(), gc.get_freeze_count()
    startup_gc.settle()  # a caller of main() in its own process never deferred: nothing changes
    assert gc.get_threshold() == before and gc.get_freeze_count() == frozen
    startup_gc.defer()
    try:
        assert gc.get_threshold() == (startup_gc.STARTUP_THRESHOLD, *before[1:])
        startup_gc.settle()
        assert gc.get_threshold() == before and gc.get_freeze_count() > frozen
    finally:
        gc.unfreeze()  # this is pytest's process: leave its objects collectable
        gc.set_threshold(*before)
