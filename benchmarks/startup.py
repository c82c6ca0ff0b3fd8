#!/usr/bin/env python
"""Start-up benchmark: what each ``backupctl`` command costs before and around its work.

Run by hand (a minute or two; it competes for the CPU with anything else running):

    python benchmarks/startup.py [--repeat 10] [--tree NAME=DIR ...] [--importtime] [--workdir DIR]

Every restore, verify and incremental the other benchmarks compare with a native tool
starts a Python process that imports the CLI, the catalog (SQLAlchemy) and whatever
those import, so start-up is a fixed cost in each of their ratios. This runs ``--help``,
``list``, ``verify``, ``restore`` (a SQLite backup into a new file) and ``backup --wait`` on
the embedded default, the last four with ``--json`` as the other benchmarks call them.

Each ``--tree`` is a checkout put first on PYTHONPATH (default: this one), for example a
``git archive`` of main to compare against; the trees take turns within each repetition,
in alternating order, so that load falls on all of them alike. The medians of wall time
and of CPU time (user + system, from the child's rusage: steadier than wall time on a
shared machine) are printed and written as JSON to benchmarks/out/startup-<timestamp>.json.
``--importtime`` also runs each command once per tree under ``python -X importtime`` and
prints the import time by top-level package.

If PYTHONDONTWRITEBYTECODE is set and a tree has no ``__pycache__``, every run compiles
that tree's modules from source; ``python -m compileall -q DIR/backup_tasks`` before the
run writes the bytecode whatever the variable says, as ``pip install`` does.

Set-up: the quickstart (``python -m backup_tasks.demo``) in the workdir, with the first
tree: keys, a targets file, a SQLite database and a folder, both backed up and verified.
The workdir is deleted unless ``--keep``.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT_DIR = REPO / "benchmarks" / "out"
COMMANDS = {
    "--help": ["--help"],
    "list": ["list", "--json"],
    "verify": ["verify", "{id}", "--json"],
    "restore": ["restore", "{id}", "--to", "{scratch}/restored.db", "--json"],
    "backup --wait": ["backup", "app-sqlite", "--wait", "--json"],
}


def run(tree: Path, args: list[str], cwd: Path, *, importtime: bool = False) -> tuple[float, float, str]:
    """One backupctl process: wall seconds, CPU seconds (user + system) and its stderr."""
    argv = [sys.executable, *(["-X", "importtime"] if importtime else []), "-m", "backup_tasks.cli", *args]
    env = dict(os.environ, PYTHONPATH=str(tree))
    started = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    proc.stderr.close()
    if status != 0:
        raise SystemExit(f"backupctl {' '.join(args)} with {tree} failed:\n{err.decode()[-2000:]}")
    return wall, usage.ru_utime + usage.ru_stime, err.decode()


def by_package(importtime_log: str) -> dict[str, float]:
    """Milliseconds of import time (each module's own) per top-level package, largest first."""
    totals: collections.Counter = collections.Counter()
    for line in importtime_log.splitlines():
        if line.startswith("import time:") and "self [us]" not in line:
            own, _, name = line.removeprefix("import time:").split("|")
            totals[name.strip().split(".")[0]] += int(own) / 1000
    return dict(totals.most_common(12))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--tree", action="append", default=[], help="NAME=DIR, a checkout to put first on PYTHONPATH")
    parser.add_argument("--importtime", action="store_true")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true")
    opts = parser.parse_args()
    trees = {name: Path(path).resolve() for name, path in (t.split("=", 1) for t in opts.tree)} or {"this": REPO}
    work = opts.workdir or Path(tempfile.mkdtemp(prefix="bench-startup-"))
    first = next(iter(trees.values()))
    try:
        subprocess.run([sys.executable, "-m", "backup_tasks.demo", str(work / "demo")], check=True, stdout=subprocess.DEVNULL,
                       env=dict(os.environ, PYTHONPATH=str(first)))
        cwd, config = work / "demo", work / "demo" / "backup-tasks.toml"
        listed = subprocess.run([sys.executable, "-m", "backup_tasks.cli", "list", "--json", "--config", str(config)], cwd=cwd,
                                env=dict(os.environ, PYTHONPATH=str(first)), capture_output=True, text=True, check=True)
        backup_id = next(r["id"] for r in json.loads(listed.stdout) if r["target"] == "app-sqlite")
        samples = {(t, c): ([], []) for t in trees for c in COMMANDS}
        for i in range(opts.repeat):
            for command, args in COMMANDS.items():
                for tree in (list(trees) if i % 2 == 0 else list(reversed(trees))):
                    scratch = work / "scratch"
                    shutil.rmtree(scratch, ignore_errors=True)
                    scratch.mkdir()
                    argv = [a.format(id=backup_id, scratch=scratch) for a in args] + (["--config", str(config)] if args != ["--help"] else [])
                    wall, cpu, _ = run(trees[tree], argv, cwd)
                    samples[(tree, command)][0].append(wall)
                    samples[(tree, command)][1].append(cpu)
        load = os.getloadavg()
        print(f"medians of {opts.repeat}, seconds (wall / CPU); load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
        print(f"{'command':15}" + "".join(f"{t:>24}" for t in trees))
        result = {"repeat": opts.repeat, "load": load, "trees": {t: str(p) for t, p in trees.items()}, "commands": {}}
        for command in COMMANDS:
            row = {t: {"wall": statistics.median(samples[(t, command)][0]), "cpu": statistics.median(samples[(t, command)][1])}
                   for t in trees}
            result["commands"][command] = row
            print(f"{command:15}" + "".join(f"{row[t]['wall']:12.3f}{row[t]['cpu']:12.3f}" for t in trees))
        if opts.importtime:
            for command, args in COMMANDS.items():
                for tree in trees:
                    argv = [a.format(id=backup_id, scratch=work / "scratch") for a in args] + (["--config", str(config)] if args != ["--help"] else [])
                    shutil.rmtree(work / "scratch", ignore_errors=True)
                    (work / "scratch").mkdir()
                    packages = by_package(run(trees[tree], argv, cwd, importtime=True)[2])
                    result["commands"][command][tree]["imports_ms"] = packages
                    print(f"{command} [{tree}] " + "  ".join(f"{k} {v:.0f}" for k, v in packages.items()))
        OUT_DIR.mkdir(exist_ok=True)
        out = OUT_DIR / f"startup-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}.json"
        out.write_text(json.dumps(result, indent=1))
        print(f"wrote {out}")
    finally:
        if not opts.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
