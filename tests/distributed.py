"""Real processes for the distributed tests: ``celery beat`` with redbeat, a private ``redis-server``, Flower.

Like conftest's Worker, each is the real program in its own process group with its own
log file, started the way an operator starts it, and stopped (or killed) by the test.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest
import redis

from processes import stop_group


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")



def big_tree(tmp_path: Path, mib: int, *, random: bool = False) -> Path:
    """A files target's tree of one ``mib`` MiB file: half random, half zstd-friendly (or all random),
    so its stages run long enough for a test to catch them mid-stream."""
    tree = tmp_path / "data"
    tree.mkdir()
    block = os.urandom(1 << 20)
    with open(tree / "big.bin", "wb") as fh:
        for i in range(mib):
            fh.write(os.urandom(1 << 20) if random else block[: (1 << 19)] + bytes([i % 251]) * (1 << 19))
    return tree


class Process:
    """A program in its own session, output to a log file; stop() is SIGTERM then SIGKILL, kill() is SIGKILL."""

    def __init__(self, argv: list[str], log: Path, env: dict | None = None) -> None:
        self.argv = argv
        self.log = log
        self.proc = subprocess.Popen(argv, env=env, stdout=open(log, "ab"), stderr=subprocess.STDOUT, start_new_session=True)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_log(self, pattern: str, timeout: float = 30) -> None:
        def seen():
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.argv[:6]} exited early:\n{self.text()[-3000:]}")
            return re.search(pattern, self.text())

        wait_for(seen, timeout, f"{pattern!r} in {self.log}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self, timeout: float = 20) -> None:
        stop_group(self.proc, timeout)


class Beat(Process):
    """``celery -A backup_tasks beat``: the redbeat scheduler of celery_app's config."""

    def __init__(self, config: Path, broker: str, log: Path, extra_env: dict | None = None, level: str = "INFO") -> None:
        env = {**os.environ, "BACKUP_CONFIG": str(config), "BACKUP_BROKER_URL": broker, **(extra_env or {})}
        argv = [sys.executable, "-m", "celery", "-A", "backup_tasks", "beat", "-l", level,
                "--pidfile=", "-s", str(log.with_suffix(".schedule"))]
        super().__init__(argv, log, env)

    def sent(self, entry: str = r"\S+") -> list[tuple[float, str]]:
        """(time, entry name) of every task this beat published (all, or the entries named by the regex ``entry``).

        The built-in maintenance entries (the quarter-hourly RPO watchdog among them) fire
        whenever the clock crosses their minute, so a test counting its own target's
        publishes names them.
        """
        out = []
        for line in self.text().splitlines():
            m = re.search(r"\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}): INFO/MainProcess\] Scheduler: "
                          rf"Sending due task ({entry})(?:\s|$)", line)
            if m:
                at = time.mktime(time.strptime(m.group(1), "%Y-%m-%d %H:%M:%S")) + int(m.group(2)) / 1000
                out.append((at, m.group(3)))
        return out

    def published(self, task: str = r"\S+") -> list[str]:
        """Ids of the tasks (all, or those named by the regex ``task``) this beat published successfully.

        Celery logs each one after the publish, at level DEBUG only.
        """
        return re.findall(rf"Scheduler: {task} sent\. id->(\S+)", self.text())

    def holds_lock(self) -> bool:
        return "beat: Acquired lock" in self.text()


class RedisServer(Process):
    """A private redis-server on a free port, persistent (AOF, fsync always) like a broker must be."""

    def __init__(self, directory: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        argv = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(directory),
                "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--daemonize", "no"]
        super().__init__(argv, directory / "redis.log")
        self.url = f"redis://127.0.0.1:{self.port}/0"
        wait_for(self.ping, 10, f"redis-server on port {self.port}")

    def ping(self) -> bool:
        try:
            return redis.Redis(port=self.port, socket_connect_timeout=0.5).ping()
        except redis.ConnectionError:
            return False

    def restart(self, down_seconds: float = 2.0) -> None:
        """Shut down (SIGTERM: AOF already on disk), stay down a moment, start again on the same port and data."""
        with self.down():
            time.sleep(down_seconds)

    @contextlib.contextmanager
    def down(self) -> Iterator[None]:
        """Shut down for the block (SIGTERM: AOF already on disk), then start again on the same port and data."""
        self.stop()
        try:
            yield
        finally:
            self.__init__(self.directory, self.port)


@pytest.fixture
def private_redis(tmp_path):
    server = RedisServer(tmp_path / "redis")
    yield server
    server.stop()


@pytest.fixture
def start_beat(tmp_path):
    beats: list[Beat] = []

    def start(config: Path, broker: str, name: str = "beat", **kw) -> Beat:
        beat = Beat(config, broker, tmp_path / f"{name}.log", **kw)
        beats.append(beat)
        return beat

    yield start
    for beat in beats:
        beat.stop()
