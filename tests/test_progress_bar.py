"""Runbook: an operator at a terminal sees a live bar per stage; a script with --json sees one JSON document.

``backupctl backup --wait`` runs under a real pseudo-terminal against a real worker: the
bar is drawn from the worker's PROGRESS state, one line per stage with bytes and rate.
``backupctl restore`` (which works in the CLI process) draws its own from the bytes it
restores. With ``--json``, also on a terminal, there is no bar at all.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys

from conftest import run_cli

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")


def _in_terminal(*args: str, env: dict) -> tuple[int, str, str]:
    """Run backupctl with stdout and stderr on one pty (as in a terminal); return code, screen text, raw bytes."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "backup_tasks.cli", *args], stdin=slave, stdout=slave, stderr=slave,
                            env={**os.environ, "TERM": "xterm-256color", "COLUMNS": "120", **env}, close_fds=True)
    os.close(slave)
    chunks = []
    while True:
        ready, _, _ = select.select([master], [], [], 120)
        if not ready:
            proc.kill()
            raise AssertionError("backupctl produced no output for 120s")
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    raw = b"".join(chunks).decode(errors="replace")
    return proc.wait(timeout=60), ANSI.sub("", raw).replace("\r", "\n"), raw


def test_backup_wait_and_restore_draw_a_live_bar_only_for_people(tmp_path, make_config, redis_url, start_worker):
    tree = tmp_path / "data"
    tree.mkdir()
    # 64 MiB in 8,192 files, half random, half constant (compresses about 2x): tar and the
    # per-file scan keep the dump busy for about a second, long enough to be seen
    for d in range(64):
        (tree / f"d{d}").mkdir()
        for i in range(128):
            (tree / f"d{d}" / f"f{i}.bin").write_bytes(os.urandom(1 << 12) + bytes([i % 251]) * (1 << 12))
    # Slow enough stages (zstd -9 on one thread, a 24 MiB/s tier) that the client, polling
    # four times a second, sees compress and upload running, as it would on real data.
    cfg = make_config(f'[targets.bulk]\nkind = "files"\nhost = "hostA"\npaths = ["{tree}"]\n',
                      settings="compression_threads = 1\ncompression_level = 9\n",
                      tiers=f'[tiers.local]\nkind = "local"\npath = "{tmp_path / "state" / "store"}"\nbandwidth_limit = "24MiB"\n')
    start_worker(cfg, redis_url, ["host.hostA", "verify"], name="w1@hostA")
    env = {"BACKUP_BROKER_URL": redis_url}

    code, screen, raw = _in_terminal("backup", "bulk", "--wait", "--config", str(cfg), env=env)
    assert code == 0, screen
    assert "backup of bulk" in screen and "verified" in screen
    drawn = {stage for stage in ("dump", "compress", "encrypt", "upload", "verify")
             if re.search(rf"^{stage}\s+\S*\s+[\d.]+(/[\d.]+)? (MiB|KiB|GiB)", screen, re.M)}
    assert {"dump", "compress", "upload"} <= drawn, screen[-3000:]  # each a bar line with its bytes
    assert re.search(r"[\d.]+ (MiB|KiB)/s", screen), screen[-3000:]  # ... and its rate
    assert "━" in raw  # rich's bar glyph

    backup_id = re.search(r"^(bulk-\d{8}T\d{6}Z-[0-9a-f]{6}) verified", screen, re.M).group(1)
    code, screen, _ = _in_terminal("restore", backup_id, "--to", str(tmp_path / "restored"), "--config", str(cfg), env=env)
    assert code == 0, screen
    assert re.search(r"^restore\s+\S*\s+[\d.]+/[\d.]+ MiB", screen, re.M), screen[-2000:]
    assert f"restored {backup_id}" in screen

    # A script: --json on a terminal still gets exactly one JSON document and no bar.
    code, screen, raw = _in_terminal("backup", "bulk", "--wait", "--json", "--config", str(cfg), env=env)
    assert code == 0 and "━" not in raw
    assert json.loads(screen.strip())["status"] == "verified"
    # Without a terminal (a pipe), people get one line per stage instead of a bar.
    piped = run_cli("backup", "bulk", "--wait", config=cfg, env=env, check=0)
    assert "━" not in piped.stderr and re.search(r": compress$", piped.stderr, re.M), piped.stderr
