"""A private PostgreSQL 15 cluster that archives its WAL through ``backupctl wal push``.

PostgreSQL runs archive_command and restore_command as its own OS user (postgres), who
cannot enter /root where the test interpreter lives. backupctl is therefore run, for
the server and for every command of these tests, as postgres through the system's
python3.11 of the same minor version, with this worktree and the venv's site-packages
on PYTHONPATH; all state (config, keys, catalog, tiers, spool) lives in a directory
postgres owns, as it would on a database host.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import psycopg2

import backup_tasks
from backup_tasks.records import keys as keys_mod
from databases import free_port

PG_BIN = Path("/usr/lib/postgresql/15/bin")
SYSTEM_PYTHON = f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"
PYTHONPATH = f"{Path(backup_tasks.__file__).resolve().parents[1]}:{sysconfig.get_paths()['purelib']}"
BACKUPCTL = f"env PYTHONPATH={PYTHONPATH} {SYSTEM_PYTHON} -m backup_tasks.cli"


def as_postgres(*argv, check: bool = True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["runuser", "-u", "postgres", "--", *argv], capture_output=True, text=True, check=check, **kw)


class PitrCluster:
    def __init__(self, target: str = "orders") -> None:
        self.target = target
        self.pw = pwd.getpwnam("postgres")
        self.root = Path(tempfile.mkdtemp(prefix="bt-pitr-"))
        os.chown(self.root, self.pw.pw_uid, self.pw.pw_gid)
        os.chmod(self.root, 0o700)
        self.data = self.root / "data"
        self.port = free_port()
        self.config = self.root / "targets.toml"
        keys_mod.generate(self.root / "keys")
        self.config.write_text(
            "[settings]\n"
            f'staging_dir = "{self.root / "staging"}"\n'
            f'spool_dir = "{self.root / "spool"}"\n'
            f'catalog_url = "sqlite:///{self.root / "catalog.db"}"\n'
            f'recipients_file = "{self.root / "keys" / keys_mod.RECIPIENT_FILE}"\n'
            f'identities_file = "{self.root / "keys" / keys_mod.IDENTITY_FILE}"\n'
            f'signing_key_file = "{self.root / "keys" / keys_mod.SIGNING_KEY_FILE}"\n'
            f'backupctl_command = "{BACKUPCTL}"\n\n'
            f'[tiers.local]\nkind = "local"\npath = "{self.root / "store"}"\n\n'
            f'[targets.{target}]\nkind = "postgres"\nmode = "physical"\nhost = "db01"\n'
            f'dsn = "postgresql://postgres@127.0.0.1:{self.port}/postgres"\npitr_rpo_minutes = 5\n'
            'retention = { keep_last = 1 }\n'
            'drill = { checks = ["select count(*) > 0 from orders", "select not pg_is_in_recovery()"] }\n'
            f'options = {{ bin_dir = "{PG_BIN}" }}\n')
        self._chown_all()
        as_postgres(str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8")
        archive = f"{BACKUPCTL} --config {self.config} wal push --target {target} %p"
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(f"\nport = {self.port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{self.root}'\n"
                       f"wal_level = replica\narchive_mode = on\narchive_command = '{archive}'\nfsync = off\n")
        as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-w", "-l", str(self.root / "server.log"), "start")

    def _chown_all(self) -> None:
        for dirpath, dirs, files in os.walk(self.root):
            for name in [dirpath, *(os.path.join(dirpath, f) for f in dirs + files)]:
                os.chown(name, self.pw.pw_uid, self.pw.pw_gid)

    def cli(self, *args: str, check: int | None = 0, env: dict | None = None) -> subprocess.CompletedProcess:
        """backupctl as the postgres user, with this cluster's config (``env``: BACKUP_* overrides for this call)."""
        extra = [f"{k}={v}" for k, v in (env or {}).items()]
        done = as_postgres("env", f"PYTHONPATH={PYTHONPATH}", *extra, SYSTEM_PYTHON, "-m", "backup_tasks.cli", "--config", str(self.config),
                           *args, check=False, cwd=str(self.root))
        if check is not None and done.returncode != check:
            raise AssertionError(f"backupctl {' '.join(args)} exited {done.returncode}, expected {check}\n"
                                 f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}")
        return done

    def json(self, *args: str, check: int | None = 0, env: dict | None = None):
        return json.loads(self.cli(*args, "--json", check=check, env=env).stdout)

    def connect(self, port: int | None = None):
        conn = psycopg2.connect(host="127.0.0.1", port=port or self.port, user="postgres", dbname="postgres")
        conn.autocommit = True
        return conn

    def sql(self, statement: str, port: int | None = None):
        conn = self.connect(port)
        try:
            cur = conn.cursor()
            cur.execute(statement)
            return cur.fetchall() if cur.description else None
        finally:
            conn.close()

    def switch_and_wait_archived(self, timeout: float = 60) -> str:
        """Close the current segment and wait until archive_command has taken it."""
        name = self.sql("SELECT pg_walfile_name(pg_switch_wal())")[0][0]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            stats = self.sql("SELECT last_archived_wal, last_failed_wal FROM pg_stat_archiver")[0]
            if stats[0] and stats[0] >= name:
                return name
            time.sleep(0.2)
        raise AssertionError(f"{name} not archived after {timeout}s: {self.sql('SELECT * FROM pg_stat_archiver')}\n"
                             f"{(self.root / 'server.log').read_text()[-3000:]}")

    def stop_datadir(self, datadir: Path) -> None:
        as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(datadir), "-m", "immediate", "-w", "stop", check=False)

    def close(self) -> None:
        self.stop_datadir(self.data)
        shutil.rmtree(self.root, ignore_errors=True)
