#!/usr/bin/env python
"""Files-target benchmark: our chain against `tar | zstd -3 -T2 | age`, and the worker's memory.

Run by hand (it takes minutes and ~15 GB of transient disk with the 4 GiB case):

    python benchmarks/files.py [--files 100000] [--size 1.5G] [--workdir DIR] [--keep] [--skip-4g] [--repeat N]

To measure a commit while the working tree is being edited, run it against a snapshot:
``git archive HEAD | tar -x -C /tmp/snap && PYTHONPATH=/tmp/snap python benchmarks/files.py``
(the CLI and worker subprocesses inherit PYTHONPATH; the JSON records which code ran).

In one run it

1. generates (or, with --keep, reuses) a tree of about ``--files`` files and ``--size``
   bytes: generated log/CSV/JSON-like text (zstd -3 ratio printed), ~10% of the bytes
   incompressible (os.urandom), mostly 1-20 KiB files plus some 20-256 KiB and MB-sized;
2. writes age/signing keys (backup_tasks.records.keys.generate) and a targets file: a ``files``
   target on host "bench", a local tier, staging and a SQLite catalog under the workdir;
3. measures, each after a cat-through of the tree so the page cache is equal for all:
   a. the baseline ``tar -cf - | zstd -3 -T2 | age -r`` and its read-back
      ``age -d | zstd -d | tar -tvf -``;
   b. ``backupctl backup TARGET --wait --json`` on the embedded default (wall, peak RSS);
   c. the same through Redis and a real ``celery worker -P prefork -c 1`` (wall, the
      worker's peak RSS polled every 50 ms: pool child and whole process tree),
   with per-stage seconds and MB/s from the manifest and the verification record;
4. repeats (c) for a 256 MiB and a 4 GiB tree of a few large files (memory flatness);
5. prints a results table and writes it as JSON to benchmarks/out/files-<timestamp>.json.

Besides wall time it records CPU seconds (baseline pipeline via RUSAGE_CHILDREN, the CLI
via /usr/bin/time -v, the pool child via psutil) and the load average before each run:
on a shared 2-core machine wall times swing by 30% and more, CPU seconds much less.
With --repeat N every case runs N times, interleaved, and the median run is reported
(peak RSS: the maximum over all runs).

Generated data is deleted at the end unless --keep (then trees and keys stay in the
workdir and are reused by the next run with the same parameters). The run's state
(staging, store, catalog, baseline artifacts) is always deleted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

try:
    import psutil
except ImportError:  # pragma: no cover - a hint, not a feature
    sys.exit("psutil is missing: pip install psutil (it is in the 'test' extra)")
import redis
import zstandard

from backup_tasks.records import keys as keys_mod

import floors  # the chain's passes by the standard tools alone (this directory is on sys.path when run or imported)

REPO = Path(__file__).resolve().parent.parent
OUT_DIR = REPO / "benchmarks" / "out"
PY = sys.executable
KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30
MB = 1_000_000

REDIS_HOST = "127.0.0.1"
HOST = "bench"
TREE_VERSION = 1  # bump when the generator changes, so --keep does not reuse an old tree

RSS_TARGET = 200 * MiB
RATIO_TARGET = 1.3
FLAT_TOLERANCE = 0.10  # "the same" peak RSS for 256 MiB and 4 GiB: within 10% of the larger


# -- small helpers ----------------------------------------------------------------------------


def parse_size(text: str) -> int:
    """'1.5G', '256M', '4GiB', '1500000' -> bytes (K/M/G/T are binary multiples)."""
    m = re.fullmatch(r"\s*([0-9.]+)\s*([kmgt]?)(i?b)?\s*", text.lower())
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}")
    return int(float(m.group(1)) * 1024 ** " kmgt".index(m.group(2) or " "))


def human(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def log(msg: str = "") -> None:
    print(msg, flush=True)


def sh(cmd: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-o", "pipefail", "-c", cmd], **kw)


def timed_sh(cmd: str) -> tuple[float, float]:
    """Wall and CPU seconds (user + system of the whole pipeline, from RUSAGE_CHILDREN) of a shell pipeline."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    done = sh(cmd, stderr=subprocess.PIPE, text=True)
    seconds = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"command failed ({done.returncode}): {cmd}\n{done.stderr}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return round(seconds, 3), round(cpu, 2)


def warm(tree: Path) -> int:
    """Read every file of ``tree`` once (through cat), so each measurement starts with the same page cache."""
    sh("sync")
    done = sh(f"find {q(tree)} -type f -print0 | xargs -0 -r cat | wc -c", capture_output=True, text=True, check=True)
    return int(done.stdout.strip())


def q(path: Path | str) -> str:
    import shlex

    return shlex.quote(str(path))


def tool_version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True).stdout.strip().splitlines()
        return out[0] if out else "?"
    except OSError:
        return "missing"


def git_state() -> dict:
    def git(*args):
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True).stdout.strip()

    return {"commit": git("rev-parse", "HEAD"), "dirty_files": git("status", "--porcelain", "--untracked-files=no").splitlines()}


# -- data generation --------------------------------------------------------------------------


class TextPool:
    """A few MB of log-, CSV- and JSON-like lines built once; files are slices of it at random offsets.

    Words follow a skewed (Zipf-like) frequency over a vocabulary of real and made-up
    words; ids, timestamps, amounts and durations are random. zstd -3 compresses the
    result about 3-4x, which is what real logs and exports of this kind do (and unlike
    pgbench filler, which compresses 108x). Slices start at a line boundary.
    """

    KINDS = ("log", "csv", "json")
    POOL_BYTES = 12 * MiB  # per kind; large enough that zstd's 2 MiB window rarely sees a repeat

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        base = ("alpha beta gamma delta request response user order invoice payment session cache queue worker "
                "timeout retry connection database query index table student course grade teacher report export "
                "import upload download backup restore verify error warning notice debug started finished failed "
                "success customer account address city street country product price quantity total discount "
                "shipping status pending active closed archived created updated deleted token refresh login logout "
                "password email phone the of and to in for on with at by from").split()
        syl = ["ka", "lo", "mi", "ter", "son", "an", "ve", "ri", "dor", "pel", "qua", "zi", "nu", "bra", "ste", "ol", "ex", "in"]
        made_up = ["".join(rng.choice(syl) for _ in range(rng.randint(2, 4))) for _ in range(4000)]
        self.words = base + made_up
        self.paths = [f"/api/v1/{self.word()}/{self.word()}" for _ in range(300)]
        self.pools = {kind: self._build(kind, self.POOL_BYTES) for kind in self.KINDS}

    def word(self) -> str:
        return self.words[int(len(self.words) * self.rng.random() ** 2.5)]

    def _hex(self, n: int) -> str:
        return "%0*x" % (n, self.rng.getrandbits(4 * n))

    def _line(self, kind: str, ts: float) -> str:
        r = self.rng
        if kind == "log":
            words = " ".join(self.word() for _ in range(r.randint(0, 8)))
            return (f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(ts))}.{r.randrange(1000):03d}Z "
                    f"{r.choice(('INFO',) * 12 + ('DEBUG',) * 5 + ('WARN', 'WARN', 'ERROR'))} "
                    f"[{self.word()}-{r.randrange(16)}] req={self._hex(8)} {r.choice(('GET', 'GET', 'POST', 'PUT', 'DELETE'))} "
                    f"{r.choice(self.paths)}/{r.randrange(100000)} status={r.choice((200, 200, 200, 201, 204, 301, 404, 500))} "
                    f"ms={r.randrange(2000)} {words}\n")
        if kind == "csv":
            return (f"{r.randrange(10**7)},{self.word()} {self.word()},{self.word()}@{self.word()}.example,"
                    f"{r.randrange(100000) / 100:.2f},{r.randint(1, 50)},{r.choice(('pending', 'active', 'closed', 'archived'))},"
                    f"{2015 + r.randrange(10)}-{r.randint(1, 12):02d}-{r.randint(1, 28):02d}\n")
        return json.dumps({"id": r.randrange(10**9), "name": f"{self.word()} {self.word()}",
                           "tags": [self.word() for _ in range(r.randint(0, 4))], "score": round(r.random() * 100, 3),
                           "active": r.random() < 0.5, "note": " ".join(self.word() for _ in range(r.randint(3, 15)))}) + "\n"

    def _build(self, kind: str, size: int) -> bytes:
        lines, total, ts = [], 0, 1.7e9
        if kind == "csv":
            lines.append("id,name,email,amount,quantity,status,date\n")
        while total < size:
            line = self._line(kind, ts)
            ts += self.rng.random() * 3
            lines.append(line)
            total += len(line)
        return "".join(lines).encode()

    def take(self, kind: str, n: int) -> bytes:
        """``n`` bytes of ``kind`` text: slices of at most 1 MiB from random offsets of the pool."""
        pool = self.pools[kind]
        parts, left = [], n
        while left > 0:
            piece = min(left, MiB)
            off = self.rng.randrange(len(pool) - piece)
            nl = pool.find(b"\n", off, off + 4096)
            off = nl + 1 if 0 <= nl < len(pool) - piece else off
            parts.append(pool[off:off + piece])
            left -= piece
        return b"".join(parts)


def plan_tree(n_files: int, total: int, rng: random.Random) -> list[list]:
    """[rel_path, size, kind] for every file: ~96.5% 1-20 KiB, 3% 20-256 KiB, 0.5% MB-sized take the rest."""
    n_large = max(1, n_files // 200)
    n_medium = max(0, n_files * 3 // 100)
    n_small = n_files - n_large - n_medium
    small = [int(KiB * (1 + 19 * rng.random() ** 1.3)) for _ in range(n_small)]
    medium = [int(KiB * (20 + 236 * rng.random() ** 2)) for _ in range(n_medium)]
    fixed = sum(small) + sum(medium)
    if fixed > 0.75 * total:  # a small --size: shrink the small and medium files, keep the shape
        scale = 0.75 * total / fixed
        small = [max(64, int(s * scale)) for s in small]
        medium = [max(64, int(s * scale)) for s in medium]
        fixed = sum(small) + sum(medium)
    weights = [rng.lognormvariate(0, 1.0) for _ in range(n_large)]
    rest = total - fixed
    large = [max(1, int(rest * w / sum(weights))) for w in weights]
    sizes = small + medium + large
    rng.shuffle(sizes)
    # ~10% of the bytes incompressible: shuffled files, greedily, until the share is reached
    order = list(range(len(sizes)))
    rng.shuffle(order)
    random_bytes, noise = 0, set()
    for i in order:
        if random_bytes >= 0.10 * total:
            break
        if random_bytes + sizes[i] <= 0.11 * total:
            noise.add(i)
            random_bytes += sizes[i]
    per_dir = 100
    n_dirs = max(1, (n_files + per_dir - 1) // per_dir)
    top = max(1, int(n_dirs ** 0.5))
    ext = {"log": "log", "csv": "csv", "json": "json", "random": "bin"}
    noise_ext = ("jpg", "png", "gz", "bin", "pdf")
    files = []
    for i, size in enumerate(sizes):
        d = i // per_dir
        kind = "random" if i in noise else rng.choice(TextPool.KINDS)
        suffix = rng.choice(noise_ext) if kind == "random" else ext[kind]
        files.append([f"svc{d % top:02d}/batch-{d // top:04d}/f{i:06d}.{suffix}", size, kind])
    return files



def write_file(path: Path, size: int, kind: str, pool: TextPool, sample: "RatioSample") -> None:
    with open(path, "wb") as fh:
        if kind == "random":
            left = size
            while left:
                n = min(left, 8 * MiB)
                fh.write(os.urandom(n))
                left -= n
        else:
            left = size
            while left:
                n = min(left, 8 * MiB)
                data = pool.take(kind, n)
                sample.feed(data)
                fh.write(data)
                left -= n


class RatioSample:
    """zstd -3 ratio of the generated text, measured on the first ``limit`` bytes written."""

    def __init__(self, limit: int = 128 * MiB) -> None:
        self.limit, self.raw, self.packed = limit, 0, 0
        self._c = zstandard.ZstdCompressor(level=3).compressobj()

    def feed(self, data: bytes) -> None:
        if self.raw < self.limit:
            self.raw += len(data)
            self.packed += len(self._c.compress(data))

    def ratio(self) -> float | None:
        if not self.raw:
            return None
        self.packed += len(self._c.flush())
        self.limit = 0
        return round(self.raw / max(1, self.packed), 2)


def ensure_tree(workdir: Path, name: str, params: dict, build) -> tuple[Path, dict]:
    """Reuse ``workdir/name`` if its marker matches ``params``; else (re)build it with ``build(root)``."""
    root = workdir / name
    marker = workdir / f"{name}.json"
    if marker.exists() and root.is_dir():
        info = json.loads(marker.read_text())
        if info.get("params") == params:
            log(f"reusing {root} ({info['stats']['files']} files, {human(info['stats']['bytes'])})")
            return root, {**info["stats"], "reused": True}
    if root.exists():
        shutil.rmtree(root)
    marker.unlink(missing_ok=True)
    root.mkdir(parents=True)
    started = time.monotonic()
    stats = build(root)
    sh("sync")
    stats["generate_seconds"] = round(time.monotonic() - started, 1)
    marker.write_text(json.dumps({"params": params, "stats": stats}, indent=1))
    return root, {**stats, "reused": False}


def build_many(root: Path, n_files: int, total: int, seed: int) -> dict:
    rng = random.Random(seed)
    t0 = time.monotonic()
    pool = TextPool(rng)
    pool_seconds = time.monotonic() - t0
    files = plan_tree(n_files, total, rng)
    for d in sorted({str(Path(f[0]).parent) for f in files}):
        (root / d).mkdir(parents=True, exist_ok=True)
    sample = RatioSample()
    for rel, size, kind in files:
        write_file(root / rel, size, kind, pool, sample)
    sizes = sorted(f[1] for f in files)
    by_kind: dict[str, int] = {}
    for _, size, kind in files:
        by_kind[kind] = by_kind.get(kind, 0) + size
    return {
        "files": len(files), "bytes": sum(sizes), "dirs": len({str(Path(f[0]).parent) for f in files}),
        "bytes_by_kind": by_kind, "incompressible_share": round(by_kind.get("random", 0) / sum(sizes), 3),
        "files_1_20KiB": sum(1 for s in sizes if s <= 20 * KiB), "files_over_1MiB": sum(1 for s in sizes if s > MiB),
        "median_size": sizes[len(sizes) // 2], "largest": sizes[-1],
        "text_zstd3_ratio": sample.ratio(), "text_ratio_sample_bytes": sample.raw, "pool_seconds": round(pool_seconds, 1),
    }


def build_big(root: Path, total: int, seed: int) -> dict:
    """A few large files: 75% of the bytes text (log/CSV/JSON), 25% random."""
    rng = random.Random(seed)
    pool = TextPool(rng)
    sample = RatioSample()
    parts = [("app.log", "log", 0.30), ("export.csv", "csv", 0.25), ("events.json", "json", 0.20), ("media.bin", "random", 0.25)]
    for name, kind, share in parts:
        write_file(root / name, int(total * share), kind, pool, sample)
    return {"files": len(parts), "bytes": sum(int(total * s) for _, _, s in parts), "incompressible_share": 0.25,
            "text_zstd3_ratio": sample.ratio(), "text_ratio_sample_bytes": sample.raw}


# -- processes and memory ---------------------------------------------------------------------


class RssPoller(threading.Thread):
    """Polls the RSS of a process tree every ``interval`` s; keeps the max per pid and of the tree's sum."""

    def __init__(self, root_pid: int, interval: float = 0.05) -> None:
        super().__init__(daemon=True, name="rss-poller")
        self.root_pid, self.interval = root_pid, interval
        self.max_by_pid: dict[int, int] = {}
        self.info: dict[int, dict] = {}
        self.max_tree = 0
        self.samples = 0
        #: (time.time(), RSS of the largest of root's direct children, of all of them together, of the tree)
        self.timeline: list[tuple[float, int, int, int]] = []
        self.cpu_first: dict[int, float] = {}  # CPU seconds (own + reaped children) of root and its direct children
        self.cpu_last: dict[int, float] = {}
        self.own_cpu_seconds = 0.0  # what this polling thread itself cost
        self._halt = threading.Event()

    def run(self) -> None:
        try:
            root = psutil.Process(self.root_pid)
        except psutil.NoSuchProcess:
            return
        while not self._halt.is_set():
            try:
                procs = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            total = children = largest = 0
            for p in procs:
                try:
                    rss = p.memory_info().rss
                    if p.pid not in self.info:
                        self.info[p.pid] = {"ppid": p.ppid(), "cmd": " ".join(p.cmdline()[:6])[:120]}
                except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                    continue
                total += rss
                if self.info[p.pid]["ppid"] == self.root_pid:
                    children += rss
                    largest = max(largest, rss)
                if p.pid == self.root_pid or self.info[p.pid]["ppid"] == self.root_pid:
                    try:
                        ct = p.cpu_times()
                    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                        continue
                    cpu = ct.user + ct.system + ct.children_user + ct.children_system
                    self.cpu_first.setdefault(p.pid, cpu)
                    self.cpu_last[p.pid] = cpu
                self.max_by_pid[p.pid] = max(self.max_by_pid.get(p.pid, 0), rss)
            self.max_tree = max(self.max_tree, total)
            self.timeline.append((time.time(), largest, children, total))
            self.samples += 1
            self.own_cpu_seconds = time.thread_time()
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)

    def max_children_of(self, pid: int) -> int:
        """The largest RSS seen of any direct child of ``pid`` (the prefork pool process)."""
        return max((rss for p, rss in self.max_by_pid.items() if self.info.get(p, {}).get("ppid") == pid), default=0)

    def cpu_of_children_of(self, pid: int) -> float:
        """CPU seconds the direct children of ``pid`` used while polled (their reaped subprocesses, e.g. tar, included)."""
        return round(sum(self.cpu_last[p] - self.cpu_first[p] for p in self.cpu_last if self.info.get(p, {}).get("ppid") == pid), 2)

    def max_matching(self, needle: str) -> int:
        return max((rss for p, rss in self.max_by_pid.items() if needle in self.info.get(p, {}).get("cmd", "")), default=0)


_LOG_LINE = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}): \w+/[\w-]+\] Task (backup\.\w+)\[[^\]]+\] "
                       r"(received|succeeded|failed|raised|retry)")


def peaks_by_stage(logfile: Path, timeline: list[tuple[float, int, int, int]]) -> dict[str, dict]:
    """Peak RSS while each task ran (from the worker log's timestamps): of the largest pool child, of all the
    pool children together (with ``-c 4`` the overlapping stages run in four of them), and of the worker tree."""
    spans: dict[str, list[float]] = {}
    for line in logfile.read_text(errors="replace").splitlines():
        m = _LOG_LINE.match(line)
        if not m:
            continue
        at = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()  # the worker logs local time
        stage = m.group(2).removeprefix("backup.")
        if m.group(3) == "received":
            spans.setdefault(stage, [at, at])[0] = at
        else:
            spans.setdefault(stage, [at, at])[1] = at
    out = {}
    for stage, (start, end) in spans.items():
        inside = [sample[1:] for sample in timeline if start - 0.05 <= sample[0] <= end + 0.05]
        if inside:
            out[stage] = {"pool_child": max(one for one, _, _ in inside), "pool_children": max(all_ for _, all_, _ in inside),
                          "tree": max(tree for _, _, tree in inside)}
    return out


class RedisDB:
    """A redis-server of the benchmark's own on a free loopback port (DB 1), as tests/conftest.py starts one.

    Never a DB of a Redis someone else uses: flushing it before and after would delete
    their data. The server runs under ``sh`` reading a pipe only this process holds, so it
    stops when the benchmark ends, however it ends.
    """

    def __init__(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="bench-redis-"))
        with socket.socket() as s:
            s.bind((REDIS_HOST, 0))
            port = s.getsockname()[1]
        args = ["--port", str(port), "--bind", REDIS_HOST, "--dir", str(self.directory), "--save", "", "--appendonly", "no"]
        self.proc = subprocess.Popen(["sh", "-c", 'redis-server "$@" & server=$!; read _; kill $server; wait $server', "sh", *args],
                                     stdin=subprocess.PIPE, stdout=open(self.directory / "redis.log", "wb"), stderr=subprocess.STDOUT)
        self.db = 1
        self.client = redis.Redis(host=REDIS_HOST, port=port, db=self.db, socket_connect_timeout=0.5)
        deadline = time.monotonic() + 10
        while True:
            try:
                self.client.ping()
                break
            except redis.ConnectionError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start:\n{(self.directory / 'redis.log').read_text()}") from None
                time.sleep(0.02)
        self.url = f"redis://{REDIS_HOST}:{port}/{self.db}"

    def release(self) -> None:
        self.proc.stdin.close()  # sh stops redis-server
        self.proc.wait(timeout=20)
        shutil.rmtree(self.directory, ignore_errors=True)


_DONE_LINE = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}): \w+/[\w-]+\] Task (backup\.\w+)\[[^\]]+\] "
                        r"succeeded in ([\d.]+)s")


def stage_spans(logfile: Path, since: float) -> dict[str, list[float]]:
    """Each stage's start and end, in seconds after ``since`` (a wall-clock time), from the worker log.

    Celery logs the end of a task with its run time, so start = end - run time: a stage
    whose start is before the previous stage's end overlapped it.
    """
    spans: dict[str, list[float]] = {}
    for line in logfile.read_text(errors="replace").splitlines():
        m = _DONE_LINE.match(line)
        if not m or m.group(2) == "backup.start":
            continue
        end = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp() - since  # the worker logs local time
        spans[m.group(2).removeprefix("backup.")] = [round(end - float(m.group(3)), 2), round(end, 2)]
    return spans


def print_spans(spans: dict[str, list[float]]) -> None:
    for stage, (start, end) in spans.items():
        log(f"      {stage:<9} {start:7.2f} → {end:7.2f} s after the command started")


#: worker slots: 4 lets one chain's dump, compress, encrypt and upload overlap (1: one stage after another)
CONCURRENCY = 4


class Worker:
    """``celery worker -P prefork -c CONCURRENCY -Q host.bench,verify`` in its own process group."""

    def __init__(self, config: Path, broker: str, logfile: Path, concurrency: int | None = None) -> None:
        self.log = logfile
        env = {**os.environ, "BACKUP_CONFIG": str(config), "BACKUP_BROKER_URL": broker}
        argv = [PY, "-m", "celery", "-A", "backup_tasks.orchestration.celery_app", "worker", "-P", "prefork",
                "-c", str(concurrency or CONCURRENCY),
                "-Q", f"host.{HOST},verify", "-n", f"bench-{os.getpid()}@{HOST}", "-l", "INFO",
                "--without-gossip", "--without-mingle", "--without-heartbeat"]
        self.proc = subprocess.Popen(argv, env=env, cwd=config.parent, stdout=open(logfile, "wb"),
                                     stderr=subprocess.STDOUT, start_new_session=True)
        LIVE_WORKERS.append(self)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited early:\n{logfile.read_text()}")
            if b"ready." in logfile.read_bytes():
                return
            time.sleep(0.1)
        raise RuntimeError(f"worker not ready after 60s:\n{logfile.read_text()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            except ProcessLookupError:
                pass
        if self in LIVE_WORKERS:
            LIVE_WORKERS.remove(self)


LIVE_WORKERS: list[Worker] = []


class WarmWorker:
    """Backups as scheduled ones run: on a worker that is up and has run one before, enqueued from Python.

    A Redis of the benchmark's own, one ``Worker`` (``-c CONCURRENCY``) kept for every run, and
    one Python process that imported the client once and times, per run, from
    ``client.enqueue_backup`` to ``wait`` returning verified (polled every 20 ms). That is
    what beat or an application sees; a ``backupctl`` process pays its interpreter's start-up
    and imports (~0.4 s) on top before it can enqueue, and a worker's first run pays its pool
    children's first use of the catalog and the stages. Call ``run`` once untimed first.
    The worker holds the catalog open: nothing may reset the config's state under it.
    """

    def __init__(self, config: Path, logfile: Path) -> None:
        self.db = RedisDB()
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("BACKUP_")},
               "BACKUP_CONFIG": str(config), "BACKUP_BROKER_URL": self.db.url}
        try:
            self.worker = Worker(config, self.db.url, logfile)
        except BaseException:
            self.db.release()
            raise
        self.driver = subprocess.Popen([PY, "-c", _ENQUEUE_AND_WAIT], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                       text=True, env=env)

    def run(self, target: str, type: str = "full") -> dict:
        """One backup, timed; {"wall_seconds", "status", "id"}."""
        self.driver.stdin.write(f"{target} {type}\n")
        self.driver.stdin.flush()
        line = self.driver.stdout.readline()
        if not line:
            raise RuntimeError(f"the enqueueing process ended ({self.driver.wait()}); see {self.worker.log}")
        return json.loads(line)

    def stop(self) -> None:
        try:
            self.driver.stdin.close()
            self.driver.wait(timeout=30)
        finally:
            try:
                self.worker.stop()
            finally:
                self.db.release()


#: reads "TARGET TYPE" lines; for each, one backup timed from enqueue to verified, printed as one JSON line
_ENQUEUE_AND_WAIT = """
import json, sys, time
from backup_tasks import client
for line in sys.stdin:
    target, type = line.split()
    started = time.monotonic()
    run = client.enqueue_backup(target, type, actor="benchmark")
    result = run.wait(timeout=7200, poll=0.02)
    print(json.dumps({"wall_seconds": round(time.monotonic() - started, 3), "status": result.get("status"),
                      "id": run.id}), flush=True)
"""


# -- the measurements -------------------------------------------------------------------------


def baseline(tree: Path, keys_dir: Path, scratch: Path) -> dict:
    recipient = (keys_dir / keys_mod.RECIPIENT_FILE).read_text().strip()
    identity = keys_dir / keys_mod.IDENTITY_FILE
    out = scratch / "baseline.tar.zst.age"
    warm(tree)
    load = os.getloadavg()[0]
    backup_s, backup_cpu = timed_sh(f"tar -cf - -C / {q(str(tree).lstrip('/'))} | zstd -3 -T2 -q | age -r {recipient} > {q(out)}")
    stored = out.stat().st_size
    sync_s, _ = timed_sh(f"sync {q(out)}")  # not part of the baseline total; our chain fsyncs every stage
    readback_s, readback_cpu = timed_sh(f"age -d -i {q(identity)} {q(out)} | zstd -d -q | tar -tvf - > /dev/null")
    out.unlink()
    sh("sync")
    warm(tree)
    # every file's sha256 (in the dump and in verify) is a pass over the same bytes: one more tee each
    floor = floors.chain_floor(f"tar -cf - -C / {q(str(tree).lstrip('/'))}", "tar -tvf - > /dev/null", recipient, identity,
                               scratch / "floor.tar.zst.age", dump_hashes=3, verify_hashes=2)
    return {"tools_floor": floor, "backup_seconds": backup_s, "readback_seconds": readback_s, "total_seconds": round(backup_s + readback_s, 3),
            "stored_bytes": stored, "sync_after_backup_seconds": sync_s, "loadavg_1m_before": load,
            "cpu_seconds": round(backup_cpu + readback_cpu, 2), "backup_cpu_seconds": backup_cpu, "readback_cpu_seconds": readback_cpu}


def cli(*args: str, config: Path, env: dict, timeout: float = 7200) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "backup_tasks.cli", *args, "--config", str(config)], capture_output=True, text=True,
                          env=env, timeout=timeout, cwd=config.parent)


def parse_json(done: subprocess.CompletedProcess, what: str) -> dict:
    try:
        return json.loads(done.stdout)
    except json.JSONDecodeError:
        raise RuntimeError(f"{what} exited {done.returncode} without JSON\nstdout:\n{done.stdout[-4000:]}\n"
                           f"stderr:\n{done.stderr[-8000:]}") from None


def stage_report(result: dict, shown: dict) -> dict:
    """Per-stage seconds and MB/s of plaintext from the manifest and the verification record."""
    manifest = shown.get("manifest") or {}
    timings = dict(manifest.get("timings") or {})
    verification = result.get("verification") or {}
    if verification.get("duration_seconds") is not None:
        timings["verify"] = round(verification["duration_seconds"], 3)
    plain = (manifest.get("plaintext") or {}).get("size") or result.get("size_plain")
    stored = (manifest.get("stored") or {}).get("size") or result.get("size_stored")
    stages = {k: {"seconds": v, "MB_per_s": round(plain / MB / v, 1) if plain and v else None}
              for k, v in timings.items() if v is not None}
    accounted = sum(s["seconds"] for s in stages.values())
    dominant = max(stages, key=lambda k: stages[k]["seconds"]) if stages else None
    return {"plaintext_bytes": plain, "stored_bytes": stored,
            "zstd_ratio": round(plain / stored, 2) if plain and stored else None,
            "stages": stages, "stages_sum_seconds": round(accounted, 3), "dominant_stage": dominant,
            "files_checked": (verification.get("detail") or {}).get("files_checked")}


def stored_manifest_size(config: Path, target: str, backup_id: str) -> int | None:
    """Size of the signed manifest (with its per-file list) on the local tier: it grows with the file count."""
    from backup_tasks.records import manifest as manifest_mod

    path = config.parent / "state" / "store" / manifest_mod.manifest_key(target, backup_id)
    return path.stat().st_size if path.exists() else None


def chain_embedded(target: str, config: Path, tree: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKUP_")}
    warm(tree)
    time_file = config.parent / "time-v.txt"
    argv = [PY, "-m", "backup_tasks.cli", "backup", target, "--wait", "--json", "--timeout", "7200", "--config", str(config)]
    use_time = Path("/usr/bin/time").exists()
    load = os.getloadavg()[0]
    if use_time:
        argv = ["/usr/bin/time", "-v", "-o", str(time_file), *argv]
    started = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=config.parent)
    poller = RssPoller(proc.pid)
    poller.start()
    stdout, stderr = proc.communicate(timeout=7200)
    wall = round(time.monotonic() - started, 3)
    poller.stop()
    maxrss = cpu = None
    if use_time and time_file.exists():
        m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", time_file.read_text())
        maxrss = int(m.group(1)) * 1024 if m else None
        times = [float(x) for x in re.findall(r"(?:User|System) time \(seconds\): ([0-9.]+)", time_file.read_text())]
        cpu = round(sum(times), 2) if times else None
        time_file.unlink()
    done = subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr)
    result = parse_json(done, "backupctl backup (embedded)")
    out = {"mode": "embedded", "wall_seconds": wall, "exit_code": proc.returncode, "status": result.get("status"), "loadavg_1m_before": load,
           "id": result.get("id"), "peak_rss_time_v": maxrss, "peak_rss_cli_polled": poller.max_matching("backup_tasks.cli"),
           "peak_rss_tree_polled": poller.max_tree, "cpu_seconds": cpu, "poller_cpu_seconds": round(poller.own_cpu_seconds, 2)}
    if result.get("status") != "verified":
        out.update(error=result.get("error") or result.get("status"), stderr_tail=stderr[-8000:])
        return out
    shown = parse_json(cli("show", result["id"], "--json", config=config, env=env), "backupctl show")
    out.update(stage_report(result, shown))
    out["stored_manifest_bytes"] = stored_manifest_size(config, target, result["id"])
    sh("sync")
    return out


def chain_redis(target: str, config: Path, tree: Path, db: RedisDB, logdir: Path) -> dict:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("BACKUP_")},
           "BACKUP_CONFIG": str(config), "BACKUP_BROKER_URL": db.url}
    warm(tree)
    logfile = logdir / f"worker-{target}.log"
    load = os.getloadavg()[0]
    try:
        worker = Worker(config, db.url, logfile)
    except RuntimeError as exc:
        return {"mode": "redis", "wall_seconds": 0.0, "status": "worker did not start", "error": str(exc)[-8000:]}
    try:
        poller = RssPoller(worker.proc.pid)
        poller.start()
        time.sleep(1.0)  # a few idle samples first
        idle_pool = poller.max_children_of(worker.proc.pid)
        idle_tree = poller.max_tree
        started, started_at = time.monotonic(), time.time()
        done = cli("backup", target, "--wait", "--json", "--timeout", "7200", config=config, env=env)
        wall = round(time.monotonic() - started, 3)
        poller.stop()
        time.sleep(0.5)  # the worker logs the last stage's end just after the run is recorded
    finally:
        worker.stop()
    result = parse_json(done, "backupctl backup (redis)")
    out = {"mode": "redis", "wall_seconds": wall, "exit_code": done.returncode, "status": result.get("status"), "loadavg_1m_before": load,
           "id": result.get("id"), "worker_idle_pool_rss": idle_pool, "worker_idle_tree_rss": idle_tree,
           "peak_rss_pool_child": poller.max_children_of(worker.proc.pid), "peak_rss_worker_main": poller.max_by_pid.get(worker.proc.pid, 0),
           "peak_rss_worker_tree": poller.max_tree, "rss_samples": poller.samples,
           "peak_rss_by_stage": peaks_by_stage(logfile, poller.timeline),
           "concurrency": CONCURRENCY, "stage_spans": stage_spans(logfile, started_at),
           "cpu_seconds_pool_child": poller.cpu_of_children_of(worker.proc.pid),
           "cpu_seconds_worker_main": round(poller.cpu_last.get(worker.proc.pid, 0) - poller.cpu_first.get(worker.proc.pid, 0), 2),
           "poller_cpu_seconds": round(poller.own_cpu_seconds, 2)}
    if result.get("status") != "verified":
        text = logfile.read_text(errors="replace")
        out.update(error=result.get("error") or result.get("status"), stderr_tail=done.stderr[-8000:],
                   worker_log_tail=text[-12000:])
        return out
    shown = parse_json(cli("show", result["id"], "--json", config=config, env=env), "backupctl show")
    out.update(stage_report(result, shown))
    out["stored_manifest_bytes"] = stored_manifest_size(config, target, result["id"])
    sh("sync")
    return out


def median_of(runs: list[dict], key: str) -> dict:
    """The run with the median ``key`` (a failed run wins, so failures are never hidden), plus every run's figure.

    Peak RSS figures are the maximum over all runs, not the median run's.
    """
    failed = [r for r in runs if r.get("error")]
    if failed:
        return {**failed[0], "runs": len(runs), "failed_runs": len(failed)}
    ordered = sorted(runs, key=lambda r: r[key])
    out = dict(ordered[(len(ordered) - 1) // 2])
    out["runs"] = len(runs)
    out[f"{key}_all"] = [r[key] for r in runs]
    for k in out:
        if k.startswith("peak_rss") and isinstance(out[k], int):
            out[k] = max(r.get(k) or 0 for r in runs)
    return out


# -- config -----------------------------------------------------------------------------------


def write_config(path: Path, keys_dir: Path, state: Path, targets: dict[str, Path]) -> Path:
    """The shape of tests/conftest.py write_config: settings with keys, one local tier, files targets on host 'bench'."""
    blocks = "".join(f'[targets.{name}]\nkind = "files"\nhost = "{HOST}"\npaths = ["{tree}"]\nstorage = ["local"]\n\n'
                     for name, tree in targets.items())
    path.write_text(
        "[settings]\n"
        f'staging_dir = "{state / "staging"}"\n'
        f'catalog_url = "sqlite:///{state / "catalog.db"}"\n'
        f'recipients_file = "{keys_dir / keys_mod.RECIPIENT_FILE}"\n'
        f'identities_file = "{keys_dir / keys_mod.IDENTITY_FILE}"\n'
        f'signing_key_file = "{keys_dir / keys_mod.SIGNING_KEY_FILE}"\n\n'
        f'[tiers.local]\nkind = "local"\npath = "{state / "store"}"\n\n'
        f"{blocks}"
    )
    return path


# -- reporting --------------------------------------------------------------------------------


def print_stages(label: str, r: dict) -> None:
    if r.get("error"):
        log(f"  {label}: FAILED: {r['error']}")
        for key in ("stderr_tail", "worker_log_tail"):
            if r.get(key):
                log(f"  --- {key} ---\n{r[key]}")
        return
    cpu = r.get("cpu_seconds") if r.get("mode") == "embedded" else r.get("cpu_seconds_pool_child")
    log(f"  {label}: wall {r['wall_seconds']:.1f} s, CPU {cpu if cpu is not None else '-'} s ({'CLI process' if r.get('mode') == 'embedded' else 'pool child'}"
        f" incl. tar), load {r.get('loadavg_1m_before', 0):.1f} before, plaintext {human(r['plaintext_bytes'])}, stored {human(r['stored_bytes'])} "
        f"(ratio {r['zstd_ratio']}), stages sum {r['stages_sum_seconds']:.1f} s, dominant: {r['dominant_stage']}")
    for stage, s in r["stages"].items():
        peak = (r.get("peak_rss_by_stage") or {}).get(stage)
        log(f"      {stage:<9} {s['seconds']:7.2f} s  {s['MB_per_s'] or 0:7.1f} MB/s of plaintext"
            + (f"   largest pool child {human(peak['pool_child'])}, pool children together {human(peak['pool_children'])}"
               if peak else ""))
    if r.get("stored_manifest_bytes"):
        log(f"      stored manifest {human(r['stored_manifest_bytes'])}")
    if r.get("stage_spans"):
        log(f"      stage timeline (worker -c {r.get('concurrency')}):")
        print_spans(r["stage_spans"])


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def summary_rows(results: dict) -> list[list[str]]:
    rows = []
    for case, r in results["cases"].items():
        base = r.get("baseline") or {}
        bt = base.get("total_seconds")
        if base:
            rows.append([case, "baseline tar|zstd|age + read-back", f"{base['backup_seconds']:.1f} + {base['readback_seconds']:.1f} = {bt:.1f}",
                         "1.00", f"{base.get('cpu_seconds', 0):.1f}", "-", "-"])
            if base.get("tools_floor"):
                fl = base["tools_floor"]
                rows.append([case, "the chain's passes by the tools alone (floors.py)", f"{fl['seconds']:.1f}",
                             f"{fl['seconds'] / bt:.2f}", f"{fl['cpu_seconds']:.1f}", "-", "-"])
        for mode in ("embedded", "redis"):
            c = r.get(mode)
            if not c:
                continue
            ratio = f"{c['wall_seconds'] / bt:.2f}" if bt else "-"
            if c.get("error"):
                rows.append([case, f"chain {mode}", f"FAILED after {c['wall_seconds']:.1f}", ratio, "-", "-", "-"])
                continue
            rss = c.get("peak_rss_pool_child") if mode == "redis" else (c.get("peak_rss_time_v") or c.get("peak_rss_cli_polled"))
            tree = c.get("peak_rss_worker_tree") if mode == "redis" else c.get("peak_rss_tree_polled")
            cpu = c.get("cpu_seconds") if mode == "embedded" else c.get("cpu_seconds_pool_child")
            rows.append([case, f"chain {mode} (dominant: {c['dominant_stage']})", f"{c['wall_seconds']:.1f}", ratio,
                         "-" if cpu is None else f"{cpu:.1f}", human(rss), human(tree)])
    return rows


# -- main -------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=100_000, help="files in the main tree (default 100000)")
    ap.add_argument("--size", type=parse_size, default=parse_size("1.5G"), help="bytes in the main tree (default 1.5G)")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "backup-tasks-bench-files",
                    help="where trees, keys and state go (default: $TMPDIR/backup-tasks-bench-files)")
    ap.add_argument("--keep", action="store_true", help="keep the generated trees and keys (and reuse them next time)")
    ap.add_argument("--skip-4g", action="store_true", help="skip the 4 GiB memory-flatness case")
    ap.add_argument("--seed", type=int, default=20240501, help="seed of the data generator (same seed: same layout, sizes and text; random files differ)")
    ap.add_argument("--repeat", type=int, default=1, help="measure each case N times and report the median (default 1)")
    ap.add_argument("--concurrency", type=int, default=4,
                    help="worker slots of the Redis runs (default 4: the stages overlap; 1: one after another)")
    args = ap.parse_args()
    global CONCURRENCY
    CONCURRENCY = args.concurrency

    def on_term(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    workdir = args.workdir.resolve()
    created_workdir = not workdir.exists()
    workdir.mkdir(parents=True, exist_ok=True)
    state = workdir / "state"
    db: RedisDB | None = None
    made: list[Path] = []
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    results: dict = {
        "benchmark": "files", "started_at": stamp, "args": {k: str(v) for k, v in vars(args).items()},
        "machine": {"cpus": os.cpu_count(), "mem_bytes": psutil.virtual_memory().total, "python": platform.python_version(),
                    "kernel": platform.release(), "tar": tool_version(["tar", "--version"]),
                    "zstd": tool_version(["zstd", "--version"]), "age": tool_version(["age", "--version"])},
        "git": git_state(), "code": str(Path(keys_mod.__file__).resolve().parent), "cases": {},
    }
    try:
        shutil.rmtree(state, ignore_errors=True)
        state.mkdir()
        keys_dir = workdir / "keys"
        made += [keys_dir, workdir / "targets.toml", state]
        if not (keys_dir / keys_mod.RECIPIENT_FILE).exists():
            shutil.rmtree(keys_dir, ignore_errors=True)
            keys_mod.generate(keys_dir)

        # 1. the trees
        log(f"== generating data in {workdir}")
        trees: dict[str, Path] = {}
        main_params = {"v": TREE_VERSION, "files": args.files, "size": args.size, "seed": args.seed}
        tree, stats = ensure_tree(workdir, "tree-files", main_params, lambda r: build_many(r, args.files, args.size, args.seed))
        made += [tree, workdir / "tree-files.json"]
        trees["bench-files"] = tree
        results["cases"]["files"] = {"tree": stats}
        log(f"tree: {stats['files']} files in {stats.get('dirs', '?')} dirs, {human(stats['bytes'])} ({stats['bytes'] / 1e9:.2f} GB), "
            f"{stats['incompressible_share']:.1%} incompressible, {stats['files_1_20KiB']} files of 1-20 KiB, "
            f"{stats['files_over_1MiB']} over 1 MiB, median {human(stats['median_size'])}, largest {human(stats['largest'])}")
        log(f"text-only zstd -3 ratio {stats['text_zstd3_ratio']} (on {human(stats['text_ratio_sample_bytes'])} of generated text)"
            + (f"; generated in {stats['generate_seconds']} s" if not stats["reused"] else ""))
        big_cases = [("256m", 256 * MiB)] + ([] if args.skip_4g else [("4g", 4 * GiB)])
        for name, size in big_cases:
            root, bstats = ensure_tree(workdir, f"tree-{name}", {"v": TREE_VERSION, "size": size, "seed": args.seed},
                                       lambda r, size=size: build_big(r, size, args.seed))
            made += [root, workdir / f"tree-{name}.json"]
            trees[f"bench-{name}"] = root
            results["cases"][name] = {"tree": bstats}
            log(f"tree-{name}: {bstats['files']} files, {human(bstats['bytes'])}, text ratio {bstats['text_zstd3_ratio']}"
                + (f", generated in {bstats['generate_seconds']} s" if not bstats["reused"] else ""))

        # 2. keys and the targets file
        config = write_config(workdir / "targets.toml", keys_dir, state, trees)
        db = RedisDB()
        log(f"config {config}; Redis {db.url} (its own); code under test: {results['code']}")

        # 3. the main tree: baseline, embedded, redis (interleaved when repeated, so drifting load hits all alike)
        case = results["cases"]["files"]
        runs: dict[str, list[dict]] = {"baseline": [], "embedded": [], "redis": []}
        for i in range(args.repeat):
            tag = f" (run {i + 1}/{args.repeat})" if args.repeat > 1 else ""
            log(f"\n== files tree: baseline{tag}")
            runs["baseline"].append(b := baseline(tree, keys_dir, state))
            log(f"  tar|zstd -3 -T2|age: {b['backup_seconds']:.2f} s; read-back age -d|zstd -d|tar -tv: {b['readback_seconds']:.2f} s; "
                f"total {b['total_seconds']:.2f} s; CPU {b['cpu_seconds']:.1f} s; load {b['loadavg_1m_before']:.1f} before; stored {human(b['stored_bytes'])} "
                f"(sync afterwards {b['sync_after_backup_seconds']:.2f} s)")
            log(f"  the chain's passes by the tools alone: {b['tools_floor']['seconds']:.2f} s, {b['tools_floor']['cpu_seconds']:.1f} CPU-s")
            log(f"== files tree: chain, embedded{tag}")
            runs["embedded"].append(r := chain_embedded("bench-files", config, tree))
            print_stages("embedded", r)
            log(f"== files tree: chain, Redis worker{tag}")
            runs["redis"].append(r := chain_redis("bench-files", config, tree, db, workdir))
            print_stages("redis", r)
            shutil.rmtree(state / "store", ignore_errors=True)
        case["baseline"] = b = median_of(runs["baseline"], "total_seconds")
        case["embedded"] = median_of(runs["embedded"], "wall_seconds")
        case["redis"] = median_of(runs["redis"], "wall_seconds")
        if args.repeat > 1:
            log(f"\n== files tree: medians of {args.repeat} runs: baseline {b['total_seconds']:.2f} s "
                f"(all: {b['total_seconds_all']}), embedded {case['embedded']['wall_seconds']:.1f} s, redis {case['redis']['wall_seconds']:.1f} s")
            print_stages("embedded (median run)", case["embedded"])
            print_stages("redis (median run)", case["redis"])
        for mode in ("embedded", "redis"):
            r = case[mode]
            if r.get("error"):
                continue
            r["ratio_to_baseline"] = round(r["wall_seconds"] / b["total_seconds"], 2)
            log(f"  chain_{mode} / baseline_total = {r['wall_seconds']:.1f} / {b['total_seconds']:.1f} = {r['ratio_to_baseline']:.2f}x "
                f"(target <= {RATIO_TARGET}x: {'met' if r['ratio_to_baseline'] <= RATIO_TARGET else 'MISSED'})")
        log(f"  peak RSS embedded CLI {human(case['embedded'].get('peak_rss_time_v'))} (time -v), "
            f"worker pool child {human(case['redis'].get('peak_rss_pool_child'))}, worker tree {human(case['redis'].get('peak_rss_worker_tree'))}")

        # 4. memory flatness
        for name, size in big_cases:
            case = results["cases"][name]
            root = trees[f"bench-{name}"]
            runs = {"baseline": [], "redis": []}
            for i in range(args.repeat):
                tag = f" (run {i + 1}/{args.repeat})" if args.repeat > 1 else ""
                log(f"\n== {name} tree: baseline{tag}")
                runs["baseline"].append(b := baseline(root, keys_dir, state))
                log(f"  total {b['total_seconds']:.2f} s ({b['backup_seconds']:.2f} + {b['readback_seconds']:.2f}); CPU {b['cpu_seconds']:.1f} s; "
                    f"load {b['loadavg_1m_before']:.1f} before")
                log(f"== {name} tree: chain, Redis worker{tag}")
                runs["redis"].append(r := chain_redis(f"bench-{name}", config, root, db, workdir))
                print_stages("redis", r)
                log(f"  worker peak RSS: pool child {human(r.get('peak_rss_pool_child'))}, whole tree {human(r.get('peak_rss_worker_tree'))}, "
                    f"idle pool child {human(r.get('worker_idle_pool_rss'))}")
                shutil.rmtree(state / "store", ignore_errors=True)
            case["baseline"] = b = median_of(runs["baseline"], "total_seconds")
            case["redis"] = r = median_of(runs["redis"], "wall_seconds")
            if not r.get("error"):
                r["ratio_to_baseline"] = round(r["wall_seconds"] / b["total_seconds"], 2)
            if not args.keep and name == "4g":
                shutil.rmtree(root, ignore_errors=True)  # 4 GiB less on disk for the rest of the run

        flat = [results["cases"][n]["redis"].get("peak_rss_pool_child") for n, _ in big_cases if "redis" in results["cases"][n]]
        flat = [x for x in flat if x]
        if flat:
            spread = max(flat) - min(flat)
            results["memory_flatness"] = {"cases": [n for n, _ in big_cases], "pool_child_peaks": flat, "max": max(flat),
                                          "spread": spread, "target_met": max(flat) <= RSS_TARGET,
                                          "flat": spread <= FLAT_TOLERANCE * max(flat)}

        # 5. the table
        rows = summary_rows(results)
        text = table(rows, ["case", "run", "wall s", "x baseline", "CPU s", "peak RSS (process)", "peak RSS (tree)"])
        log("\n== results\n" + text)
        if "memory_flatness" in results:
            mf = results["memory_flatness"]
            log(f"memory flatness ({' vs '.join(mf['cases'])}): pool child peaks {', '.join(human(x) for x in mf['pool_child_peaks'])}; "
                f"<= {human(RSS_TARGET)}: {'met' if mf['target_met'] else 'MISSED'}; same for both (spread {human(mf['spread'])}, "
                f"tolerance {FLAT_TOLERANCE:.0%}): {'yes' if mf['flat'] else 'NO'}")
        results["table"] = text
        results["finished_at"] = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        return 0
    finally:
        for worker in list(LIVE_WORKERS):
            worker.stop()
        if db is not None:
            db.release()
        OUT_DIR.mkdir(parents=True, exist_ok=True)
        out = OUT_DIR / f"files-{stamp}.json"
        out.write_text(json.dumps(results, indent=1, default=str))
        log(f"results: {out}")
        shutil.rmtree(state, ignore_errors=True)
        if not args.keep:
            for path in made:
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
            for log_file in workdir.glob("worker-*.log"):
                log_file.unlink()
            if created_workdir or not any(workdir.iterdir()):
                shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
