"""Shared set-up: real keys, real config files, a Redis DB of this run's own and real worker processes.

Nothing here is a stand-in: the worker is ``celery worker`` in its own process, talking
to a real ``redis-server``. That server is this test run's own, on a free loopback port,
so a test flushes only DBs that nothing but this run has ever written to; a Redis that
someone else uses (the one on 6379, say) is never touched.
"""

from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from backup_tasks.records import keys as keys_mod
from processes import stop_group

REDIS_HOST = "127.0.0.1"
#: redis-server's default number of DBs; DB 0 stays unused
REDIS_DBS = 16


def pytest_sessionstart(session):
    """Compile backup_tasks once, up front: with PYTHONDONTWRITEBYTECODE set (as in CI), every backupctl,
    worker, beat and archive_command process the suite starts (hundreds) would otherwise compile the
    modules it imports again, about a quarter of a second of CPU each."""
    import compileall

    import backup_tasks

    compileall.compile_dir(Path(backup_tasks.__file__).parent, quiet=1)


@pytest.fixture(scope="session")
def session_keys(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("keys") / "k"
    keys_mod.generate(out)
    return out


def write_config(path: Path, keys_dir: Path | None, *, targets: str, settings: str = "", tiers: str | None = None,
                 state: Path | None = None) -> Path:
    """A real targets file; state (catalog, staging, store) lives beside it."""
    state = state or path.parent / "state"
    key_lines = ""
    if keys_dir is not None:
        key_lines = (f'recipients_file = "{keys_dir / keys_mod.RECIPIENT_FILE}"\n'
                     f'identities_file = "{keys_dir / keys_mod.IDENTITY_FILE}"\n'
                     f'signing_key_file = "{keys_dir / keys_mod.SIGNING_KEY_FILE}"\n')
    if tiers is None:
        tiers = f'[tiers.local]\nkind = "local"\npath = "{state / "store"}"\n'
    path.write_text(
        "[settings]\n"
        f'staging_dir = "{state / "staging"}"\n'
        f'catalog_url = "sqlite:///{state / "catalog.db"}"\n'
        f"{key_lines}{settings}\n{tiers}\n{targets}\n"
    )
    return path


@pytest.fixture
def make_config(tmp_path, session_keys):
    def make(targets: str, **kw) -> Path:
        kw.setdefault("keys_dir", session_keys)
        keys_dir = kw.pop("keys_dir")
        return write_config(tmp_path / "targets.toml", keys_dir, targets=targets, **kw)

    return make


@pytest.fixture
def runtime_for():
    """Install a Runtime for a config file in this process (what the CLI does), and undo it after."""
    from backup_tasks import config
    from backup_tasks.ops import runtime
    from backup_tasks.orchestration.celery_app import configure

    previous = runtime._current

    def make(path: Path, **env):
        rt = runtime.install(runtime.Runtime(config.load(path, environ={**os.environ, **env})))
        configure(rt.settings)
        return rt

    yield make
    runtime._current = previous


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory) -> int:
    """This run's own redis-server on a free port (no persistence: a test's data lives one test); its port.

    It runs under ``sh`` reading its stdin, which only this process writes to: when the run
    ends, however it ends (even kill -9), the pipe closes and sh stops redis-server, so no
    server outlives the run that started it.
    """
    directory = tmp_path_factory.mktemp("redis")
    with socket.socket() as s:
        s.bind((REDIS_HOST, 0))
        port = s.getsockname()[1]
    args = ["--port", str(port), "--bind", REDIS_HOST, "--dir", str(directory), "--save", "", "--appendonly", "no",
            "--databases", str(REDIS_DBS)]
    script = 'redis-server "$@" & server=$!; read _; kill $server; wait $server'
    proc = subprocess.Popen(["sh", "-c", script, "sh", *args], stdin=subprocess.PIPE,
                            stdout=open(directory / "redis.log", "wb"), stderr=subprocess.STDOUT)
    client = redis.Redis(host=REDIS_HOST, port=port, socket_connect_timeout=0.5)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"redis-server did not start (install Debian's redis-server):\n{(directory / 'redis.log').read_text()}")
            time.sleep(0.02)
    client.close()
    yield port
    proc.stdin.close()  # sh kills redis-server and waits for it
    proc.wait(timeout=20)


_next_db = itertools.cycle(range(1, REDIS_DBS))


@pytest.fixture
def redis_url(redis_server):
    """A DB of this run's own Redis, flushed before and after (each test the next number, so a
    process a previous test left behind writes where no current test reads)."""
    db = next(_next_db)
    client = redis.Redis(host=REDIS_HOST, port=redis_server, db=db)
    client.flushdb()
    yield f"redis://{REDIS_HOST}:{redis_server}/{db}"
    client.flushdb()
    client.close()


class Worker:
    """A real ``celery worker`` process with its own log file."""

    def __init__(self, config: Path, broker: str, queues: list[str], name: str, log: Path, pool: str = "prefork",
                 extra_env: dict | None = None, concurrency: int = 1) -> None:
        self.log = log
        # The pool's temporary directories (multiprocessing's pymp-*) go under the test's own
        # directory: a worker killed at the end of its test never removes them itself.
        tmp = log.with_suffix(".tmp")
        tmp.mkdir(exist_ok=True)
        env = {**os.environ, "TMPDIR": str(tmp), "BACKUP_CONFIG": str(config), "BACKUP_BROKER_URL": broker, **(extra_env or {})}
        argv = [sys.executable, "-m", "celery", "-A", "backup_tasks", "worker", "-P", pool, "-c", str(concurrency),
                "-Q", ",".join(queues), "-n", name, "-l", "INFO", "--without-gossip", "--without-mingle", "-E"]
        self.proc = subprocess.Popen(argv, env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)
        self._wait_ready()

    def _wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited early:\n{self.log.read_text()}")
            if b"ready." in self.log.read_bytes():
                return
            time.sleep(0.1)
        raise RuntimeError(f"worker not ready after {timeout}s:\n{self.log.read_text()}")

    def children(self) -> list[int]:
        path = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        return [int(p) for p in path.read_text().split()] if path.exists() else []

    def stop(self) -> None:
        stop_group(self.proc)

    def kill(self) -> None:
        """SIGKILL the group (main process and pool) and wait."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


@pytest.fixture
def start_worker(tmp_path):
    workers: list[Worker] = []

    def start(config: Path, broker: str, queues: list[str], name: str = "w1@localhost", **kw) -> Worker:
        worker = Worker(config, broker, queues, name, tmp_path / f"{name.replace('@', '_')}.log", **kw)
        workers.append(worker)
        return worker

    yield start
    # The test is over: a warm shutdown (about 0.85 s a worker) would show nothing anyone looks at,
    # and its DB is flushed next. Tests that check a clean stop call stop() themselves.
    for worker in workers:
        worker.kill()


def run_cli(*args: str, config: Path | None = None, env: dict | None = None, check: int | None = None,
            cwd: Path | None = None) -> subprocess.CompletedProcess:
    """backupctl as a user runs it: a real process, its exit code and its stdout (env value None unsets)."""
    argv = [sys.executable, "-m", "backup_tasks.cli", *args]
    if config is not None:
        argv += ["--config", str(config)]
    environ = dict(os.environ)
    for key, value in (env or {}).items():
        if value is None:
            environ.pop(key, None)
        else:
            environ[key] = value
    done = subprocess.run(argv, capture_output=True, text=True, env=environ, timeout=600, cwd=cwd)
    if check is not None and done.returncode != check:
        raise AssertionError(f"{argv} exited {done.returncode}, expected {check}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}")
    return done

# The S3 server (SeaweedFS) fixtures, registered once here so the whole session shares one server.
from s3server import s3_bucket, s3_env, s3_server  # noqa: E402,F401
