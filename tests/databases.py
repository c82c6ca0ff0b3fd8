"""Real database servers for the tests: PostgreSQL 15 and MariaDB on loopback, plus a
password-checking PostgreSQL cluster this run starts itself.

The shared servers outlive the test run, so every database a test creates has a unique
name and is dropped afterwards (``pg_names``/``my_names`` track them, including the
names a restore or a drill creates). The loopback PostgreSQL trusts every connection
(pg_hba ``trust``), which makes a wrong password impossible to test there; the
``scram_cluster`` fixture therefore runs ``initdb``/``pg_ctl`` as the postgres user with
scram-sha-256 on a free port, for the tests that need a password to matter.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import psycopg2
import pymysql
import pytest

PG = dict(host="127.0.0.1", port=5432, user="postgres")
MY = dict(host="127.0.0.1", port=3306, user="root")
PG_BIN = Path("/usr/lib/postgresql/15/bin")


def unique(prefix: str = "bt") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


# -- PostgreSQL ---------------------------------------------------------------------------------


@contextmanager
def pg(dbname: str = "postgres", **kw):
    conn = psycopg2.connect(dbname=dbname, **{**PG, **kw})
    conn.autocommit = True
    try:
        yield conn.cursor()
    finally:
        conn.close()


def pg_databases(prefix: str) -> list[str]:
    with pg() as cur:
        cur.execute("SELECT datname FROM pg_database WHERE starts_with(datname, %s)", (prefix,))
        return [r[0] for r in cur.fetchall()]


@pytest.fixture
def pg_names():
    """unique names for databases; each name (and anything starting with it) is dropped afterwards."""
    made: list[str] = []

    def make(prefix: str = "bt") -> str:
        made.append(unique(prefix))
        return made[-1]

    yield make
    with pg() as cur:
        for name in made:
            for db in pg_databases(name):
                cur.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


PG_RICH = r"""
CREATE TABLE customers (id serial PRIMARY KEY, name text NOT NULL, email text UNIQUE, note text);
CREATE TABLE orders (
    id bigserial PRIMARY KEY,
    customer_id int NOT NULL REFERENCES customers(id),
    amount numeric(38, 12),
    placed_at timestamptz,
    meta jsonb,
    payload bytea,
    tags text[]
);
CREATE INDEX orders_placed_idx ON orders (placed_at);
CREATE TABLE audit (id serial PRIMARY KEY, order_id bigint, action text);
CREATE FUNCTION log_order() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO audit (order_id, action) VALUES (NEW.id, TG_OP); RETURN NEW; END $$;
CREATE TRIGGER orders_audit AFTER INSERT ON orders FOR EACH ROW EXECUTE FUNCTION log_order();
CREATE FUNCTION order_total(c int) RETURNS numeric LANGUAGE sql STABLE AS $$ SELECT coalesce(sum(amount), 0) FROM orders WHERE customer_id = c $$;
CREATE VIEW big_orders AS SELECT o.id, c.name, o.amount FROM orders o JOIN customers c ON c.id = o.customer_id WHERE o.amount > 100;
CREATE SCHEMA reporting;
CREATE TABLE reporting."Mixed Case" (k text PRIMARY KEY, v double precision);
CREATE TABLE empty_table (id int);

INSERT INTO customers (name, email, note) VALUES
  ('Zoë Ångström', 'zoe@example.org', NULL),
  ('李雷', NULL, 'note with ''quotes'' and \backslash'),
  ('emoji 🎉 ✓', 'e@example.org', E'tab\tnewline\nend'),
  ('plain', 'p@example.org', '');
INSERT INTO customers (name, email) SELECT 'customer ' || g, 'c' || g || '@example.org' FROM generate_series(1, 200) g;
INSERT INTO orders (customer_id, amount, placed_at, meta, payload, tags)
SELECT 1 + g % 204, (g * 1234567.891234567891)::numeric(38, 12),
       timestamptz '2024-03-31 01:30:00+02' + g * interval '37 minutes',
       jsonb_build_object('n', g, 'nested', jsonb_build_object('ü', ARRAY[g, g * 2]), 'null', NULL),
       decode(md5(g::text), 'hex'), ARRAY['a' || g, NULL, 'ü']
FROM generate_series(1, 2000) g;
INSERT INTO orders (customer_id, amount, placed_at, meta, payload, tags)
VALUES (2, 12345678901234567890.123456789012, '1999-12-31 23:59:59.999999-11', '{"all bytes": true}',
        (SELECT string_agg(set_byte('\x00'::bytea, 0, g), ''::bytea ORDER BY g) FROM generate_series(0, 255) g), NULL),
       (3, NULL, NULL, NULL, NULL, NULL);
INSERT INTO reporting."Mixed Case" SELECT 'k' || g, g / 7.0 FROM generate_series(1, 50) g;
SELECT setval('customers_id_seq', 1000);
"""


def pg_checksums(dbname: str, **kw) -> dict[str, str]:
    """A content checksum of every table: md5 over its rows' text, in a stable order."""
    out = {}
    with pg(dbname, **kw) as cur:
        cur.execute("SET TimeZone = 'UTC'")
        cur.execute("SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1, 2")
        for schema, table in cur.fetchall():
            cur.execute(f'SELECT count(*), md5(coalesce(string_agg(t::text, E\'\\n\' ORDER BY t::text), \'\')) FROM "{schema}"."{table}" t')
            out[f"{schema}.{table}"] = cur.fetchone()
    return out


def pg_objects(dbname: str) -> dict:
    """Sequence state, view contents, indexes, triggers and functions: what a logical restore must bring back."""
    with pg(dbname) as cur:
        cur.execute("SELECT last_value, is_called FROM customers_id_seq")
        seq = cur.fetchone()
        cur.execute("SELECT count(*), sum(amount) FROM big_orders")
        view = cur.fetchone()
        cur.execute("SELECT indexname FROM pg_indexes WHERE schemaname = 'public' ORDER BY 1")
        indexes = [r[0] for r in cur.fetchall()]
        cur.execute("SELECT tgname FROM pg_trigger WHERE NOT tgisinternal ORDER BY 1")
        triggers = [r[0] for r in cur.fetchall()]
        cur.execute("SELECT order_total(2)")
        total = cur.fetchone()[0]
    return {"sequence": seq, "view": view, "indexes": indexes, "triggers": triggers, "order_total": total}


def make_pg_database(name: str, sql: str = PG_RICH) -> None:
    with pg() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    with pg(name) as cur:
        cur.execute(sql)


# -- a password-checking PostgreSQL cluster -----------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def scram_cluster():
    """A real PostgreSQL 15 cluster with scram-sha-256 auth on a free port; yields (port, superuser password)."""
    postgres = pwd.getpwnam("postgres")
    root = Path(tempfile.mkdtemp(prefix="bt-scram-"))
    os.chown(root, postgres.pw_uid, postgres.pw_gid)
    data = root / "data"
    pwfile = root / "pw"
    superpass = "super-" + uuid.uuid4().hex
    pwfile.write_text(superpass + "\n")
    os.chown(pwfile, postgres.pw_uid, postgres.pw_gid)
    port = free_port()

    def as_postgres(*argv):
        return subprocess.run(["runuser", "-u", "postgres", "--", *argv], capture_output=True, text=True, check=True)

    as_postgres(str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "--auth=scram-sha-256", f"--pwfile={pwfile}",
                "-E", "UTF8", "--locale=C.UTF-8")
    as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(data), "-w", "-l", str(root / "log"), "-o",
                f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off", "start")
    try:
        yield port, superpass
    finally:
        subprocess.run(["runuser", "-u", "postgres", "--", str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


# -- MariaDB ------------------------------------------------------------------------------------


@contextmanager
def my(database: str | None = None, **kw):
    conn = pymysql.connect(**{**MY, **kw}, database=database, autocommit=True, charset="utf8mb4")
    try:
        yield conn.cursor()
    finally:
        conn.close()


def my_databases(prefix: str) -> list[str]:
    with my() as cur:
        cur.execute("SELECT SCHEMA_NAME FROM information_schema.SCHEMATA")
        return [r[0] for r in cur.fetchall() if r[0].startswith(prefix)]


@pytest.fixture
def my_names():
    made: list[str] = []

    def make(prefix: str = "bt") -> str:
        made.append(unique(prefix))
        return made[-1]

    yield make
    with my() as cur:
        for name in made:
            for db in my_databases(name):
                cur.execute(f"DROP DATABASE IF EXISTS `{db}`")


MY_RICH = [
    "CREATE TABLE customers (id INT AUTO_INCREMENT PRIMARY KEY, name VARCHAR(200) NOT NULL, email VARCHAR(200) UNIQUE, note TEXT) "
    "CHARACTER SET utf8mb4",
    "CREATE TABLE orders (id BIGINT AUTO_INCREMENT PRIMARY KEY, customer_id INT NOT NULL, amount DECIMAL(38,12), "
    "placed_at TIMESTAMP(6) NULL, local_at DATETIME(6) NULL, meta JSON, payload BLOB, "
    "CONSTRAINT fk_customer FOREIGN KEY (customer_id) REFERENCES customers(id), INDEX placed_idx (placed_at)) CHARACTER SET utf8mb4",
    "CREATE TABLE audit (id INT AUTO_INCREMENT PRIMARY KEY, order_id BIGINT, action VARCHAR(10))",
    "CREATE TABLE empty_table (id INT)",
    "CREATE TRIGGER orders_audit AFTER INSERT ON orders FOR EACH ROW INSERT INTO audit (order_id, action) VALUES (NEW.id, 'INSERT')",
    "CREATE FUNCTION order_total(c INT) RETURNS DECIMAL(38,12) READS SQL DATA RETURN (SELECT COALESCE(SUM(amount), 0) FROM orders WHERE customer_id = c)",
    "CREATE PROCEDURE add_customer(IN n VARCHAR(200)) MODIFIES SQL DATA INSERT INTO customers (name) VALUES (n)",
    "CREATE VIEW big_orders AS SELECT o.id, c.name, o.amount FROM orders o JOIN customers c ON c.id = o.customer_id WHERE o.amount > 100",
    "INSERT INTO customers (name, email, note) VALUES ('Zoë Ångström', 'zoe@example.org', NULL), ('李雷', NULL, 'quote '' and \\\\ backslash'), "
    "('emoji 🎉 ✓', 'e@example.org', 'tab\\tnewline\\nend'), ('plain', 'p@example.org', '')",
]


def make_my_database(name: str, rows: int = 2000) -> None:
    with my() as cur:
        cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    with my(name) as cur:
        for stmt in MY_RICH:
            cur.execute(stmt)
        cur.executemany("INSERT INTO customers (name, email) VALUES (%s, %s)", [(f"customer {g}", f"c{g}@example.org") for g in range(200)])
        cur.executemany(
            "INSERT INTO orders (customer_id, amount, placed_at, local_at, meta, payload) VALUES (%s, %s, %s, %s, %s, %s)",
            [(1 + g % 204, f"{g * 1234567.891234567891:.12f}", f"2024-03-31 01:{g % 60:02d}:00.{g:06d}", f"2024-10-27 02:{g % 60:02d}:00",
              f'{{"n": {g}, "ü": [{g}, null]}}', hashlib.md5(str(g).encode()).digest()) for g in range(rows)])
        cur.execute("INSERT INTO orders (customer_id, amount, placed_at, meta, payload) VALUES (2, 12345678901234567890.123456789012, "
                    "'1999-12-31 23:59:59.999999', '{\"all bytes\": true}', %s), (3, NULL, NULL, NULL, NULL)", (bytes(range(256)),))
        cur.execute("ALTER TABLE customers AUTO_INCREMENT = 1000")


def my_checksums(database: str) -> dict[str, tuple[int, str]]:
    out = {}
    with my(database) as cur:
        cur.execute("SET time_zone = '+00:00'")
        cur.execute("SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s AND TABLE_TYPE = 'BASE TABLE' ORDER BY 1", (database,))
        for (table,) in cur.fetchall():
            cur.execute(f"SELECT * FROM `{table}`")
            rows = sorted(repr(r) for r in cur.fetchall())
            out[table] = (len(rows), hashlib.sha256("\n".join(rows).encode()).hexdigest())
    return out


def my_objects(database: str) -> dict:
    with my(database) as cur:
        cur.execute("SELECT AUTO_INCREMENT FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s AND TABLE_NAME = 'customers'", (database,))
        auto = cur.fetchone()[0]
        cur.execute("SELECT COUNT(*), SUM(amount) FROM big_orders")
        view = cur.fetchone()
        cur.execute("SELECT order_total(2)")
        total = cur.fetchone()[0]
        cur.execute("SELECT ROUTINE_NAME, ROUTINE_TYPE FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = %s ORDER BY 1", (database,))
        routines = cur.fetchall()
        cur.execute("SELECT TRIGGER_NAME FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = %s", (database,))
        triggers = cur.fetchall()
        cur.execute("SELECT INDEX_NAME FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = %s AND TABLE_NAME = 'orders' ORDER BY 1", (database,))
        indexes = sorted({r[0] for r in cur.fetchall()})
    return {"auto_increment": auto, "view": view, "order_total": total, "routines": routines, "triggers": triggers, "indexes": indexes}


# -- watching process lists ---------------------------------------------------------------------


class ProcessWatch:
    """Reads every /proc/*/cmdline (and the environment of matching tools) in a loop while a dump runs."""

    def __init__(self, tools: tuple[str, ...]) -> None:
        self.tools = tools
        self.cmdlines: set[bytes] = set()
        self.environs: list[bytes] = []
        self.seen_tool = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        me = os.getpid()
        while not self._stop.is_set():
            for entry in os.scandir("/proc"):
                if not entry.name.isdigit() or int(entry.name) == me:
                    continue
                try:
                    with open(f"/proc/{entry.name}/cmdline", "rb") as fh:
                        cmd = fh.read()
                except OSError:
                    continue
                self.cmdlines.add(cmd)
                exe = cmd.split(b"\0", 1)[0]
                if any(exe.endswith(t.encode()) for t in self.tools):
                    self.seen_tool = True
                    try:
                        with open(f"/proc/{entry.name}/environ", "rb") as fh:
                            self.environs.append(fh.read())
                    except OSError:
                        pass
            time.sleep(0.002)


# -- a private MariaDB that writes a binary log ----------------------------------------------------

MARIADB_BIN = dict(install="mariadb-install-db", server="mariadbd")


@pytest.fixture(scope="session")
def binlog_mariadb():
    """A MariaDB 10.11 of this run's own, with --log-bin in ROW format, on a free port; yields its port.

    The shared server on :3306 runs without a binary log and must not be reconfigured, so
    point-in-time tests get this one. Run as root, mariadbd needs --user=root.
    """
    root = Path(tempfile.mkdtemp(prefix="bt-mybin-"))
    data = root / "data"
    subprocess.run([shutil.which(MARIADB_BIN["install"]), "--no-defaults", "--user=root", f"--datadir={data}",
                    "--auth-root-authentication-method=normal", "--skip-test-db"], capture_output=True, check=True)
    port = free_port()
    log = open(root / "server.log", "wb")
    proc = subprocess.Popen([shutil.which(MARIADB_BIN["server"]), "--no-defaults", "--user=root", f"--datadir={data}",
                             f"--socket={root / 'sock'}", f"--port={port}", "--bind-address=127.0.0.1", f"--log-bin={data / 'binlog'}",
                             "--binlog-format=ROW", "--server-id=1", "--skip-name-resolve", "--innodb-buffer-pool-size=32M",
                             f"--pid-file={root / 'pid'}"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 60
    while True:
        try:
            pymysql.connect(host="127.0.0.1", port=port, user="root").close()
            break
        except pymysql.err.OperationalError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"private MariaDB did not start:\n{(root / 'server.log').read_text()}")
            time.sleep(0.2)
    try:
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        shutil.rmtree(root, ignore_errors=True)
