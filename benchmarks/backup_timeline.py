#!/usr/bin/env python
"""Where a ``backupctl backup --wait`` spends the time around its stages: a timeline from exec to exit.

Run by hand against a targets file of your own (the embedded default: no broker):

    python benchmarks/backup_timeline.py --config targets.toml [--tree NAME=DIR ...] [--repeat 8] -- backup T --wait --json

Each run starts the command in a fresh interpreter under a small driver that marks, on one
clock shared with this process: the interpreter's start, the ends of the imports of the CLI
and of ``backup_tasks.client`` (which brings the catalog, Celery and the stages), entry to
``client.enqueue_backup``, the run's record (``ops.backup.start``), entry to each stage function
(``ops.backup.dump`` first) and the end of ``ops.verify.verify_backup``. The parent takes the
process's wall time (from just before exec to its exit) and CPU time (user + system, from its
rusage). The figures of interest: the wall and CPU seconds at which the dump starts, and the
seconds from verify's end to the process's exit.

Each ``--tree`` is a checkout put first on PYTHONPATH (default: this one); the trees take turns
within each repetition, in alternating order, so that load falls on all of them alike. Give
them the same targets file only if their catalogs are compatible. Medians are printed, and
every run is written as JSON to benchmarks/out/backup-timeline-<timestamp>.json.

The driver wraps a few functions and watches a few imports; it adds well under a millisecond.
Compile each tree first (``python -m compileall -q DIR/backup_tasks``) if PYTHONDONTWRITEBYTECODE is set.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT_DIR = REPO / "benchmarks" / "out"

#: runs in the child: marks (name, wall clock, process CPU, thread) appended to $TIMELINE_OUT, then backupctl
DRIVER = r'''
import time, os, sys
T0, C0 = time.time(), time.process_time()
import functools, importlib.abc, importlib.machinery, json, threading
OUT = open(os.environ["TIMELINE_OUT"], "a", buffering=1)
def mark(name):
    OUT.write(json.dumps([name, time.time(), time.process_time(), threading.current_thread().name]) + "\n")
OUT.write(json.dumps(["interpreter", T0, C0, "MainThread"]) + "\n")
WRAP = {"backup_tasks.ops.backup": ("start", "dump", "compress", "encrypt", "upload"),
        "backup_tasks.ops.verify": ("verify_backup",), "backup_tasks.client": ("enqueue_backup",)}
WATCH = {"backup_tasks.cli.main", "backup_tasks.client"}
def wrap(module, name):
    fn = getattr(module, name)
    @functools.wraps(fn)
    def timed(*a, **k):
        mark(name + ">")
        try:
            return fn(*a, **k)
        finally:
            mark(name + "<")
    setattr(module, name, timed)
class Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name not in WRAP and name not in WATCH:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None:
            return None
        run = spec.loader.exec_module
        def exec_module(module):
            mark("import " + name + ">")
            run(module)
            mark("import " + name + "<")
            for fn in WRAP.get(name, ()):
                wrap(module, fn)
        spec.loader.exec_module = exec_module
        return spec
sys.meta_path.insert(0, Finder())
_exit = os._exit
def exit_marked(code):
    mark("exit")
    OUT.flush()
    _exit(code)
os._exit = exit_marked
sys.argv = ["backupctl"] + sys.argv[1:]
from backup_tasks.cli import entry
entry.run()
'''


def run_once(tree: Path, args: list[str], cwd: Path) -> dict:
    """One command under the driver: its marks relative to exec, wall and CPU seconds."""
    with tempfile.NamedTemporaryFile("r", suffix=".jsonl") as marks_file:
        env = dict(os.environ, PYTHONPATH=str(tree), TIMELINE_OUT=marks_file.name)
        started = time.time()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            os.chdir(cwd)
            fd = os.open(os.devnull, os.O_WRONLY)
            os.dup2(fd, 1)
            os.execve(sys.executable, [sys.executable, "-c", DRIVER, *args], env)
        _, status, usage = os.wait4(pid, 0)
        wall = time.time() - started
        marks = [json.loads(line) for line in marks_file]
    code = os.waitstatus_to_exitcode(status)
    first: dict[str, float] = {}
    last: dict[str, list] = {}
    for name, at, cpu, _thread in marks:
        first.setdefault(name, at - started)
        last[name] = [at - started, cpu]
    result = {"exit_code": code, "wall": wall, "cpu": usage.ru_utime + usage.ru_stime,
              "marks": [[name, round(at - started, 4), round(cpu, 4), thread] for name, at, cpu, thread in marks]}
    if "dump>" in first and "verify_backup<" in last:
        dump_cpu = next(cpu for name, _at, cpu, _t in marks if name == "dump>")
        result.update(dump_start=first["dump>"], dump_start_cpu=dump_cpu, record=first.get("start>"),
                      imports_done=first.get("import backup_tasks.client<"),
                      verify_end=last["verify_backup<"][0], after_verify=wall - last["verify_backup<"][0],
                      after_verify_cpu=result["cpu"] - last["verify_backup<"][1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="the targets file (embedded default)")
    parser.add_argument("--tree", action="append", default=[], help="NAME=DIR: a checkout to measure (repeatable)")
    parser.add_argument("--repeat", type=int, default=8)
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- backup TARGET --wait --json [...]")
    args = parser.parse_args()
    command = [a for a in args.command if a != "--"]
    trees = dict(t.split("=", 1) for t in args.tree) or {"this": str(REPO)}
    argv = ["--config", str(Path(args.config).resolve()), *command]
    runs: list[dict] = []
    for i in range(args.repeat):
        names = list(trees) if i % 2 == 0 else list(reversed(trees))
        for name in names:
            load = os.getloadavg()[0]
            result = run_once(Path(trees[name]), argv, Path.cwd())
            if result["exit_code"] != 0 or "dump_start" not in result:
                sys.exit(f"{name}: exit code {result['exit_code']}, marks {[m[0] for m in result['marks']]}")
            runs.append({"tree": name, "load": load, **result})
    keys = ("wall", "cpu", "imports_done", "record", "dump_start", "dump_start_cpu", "after_verify", "after_verify_cpu")
    loads = [r["load"] for r in runs]
    print(f"{' '.join(command)}: medians of {args.repeat} (1-min load {min(loads):.1f}-{max(loads):.1f}), seconds from exec")
    print(f"{'tree':10}" + "".join(f"{k:>17}" for k in keys))
    for name in trees:
        mine = [r for r in runs if r["tree"] == name]
        print(f"{name:10}" + "".join(f"{statistics.median(r[k] for r in mine if r.get(k) is not None):17.3f}" for k in keys))
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    out = OUT_DIR / f"backup-timeline-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}.json"
    out.write_text(json.dumps({"command": command, "trees": trees, "runs": runs}, indent=1))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
