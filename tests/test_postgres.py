"""Runbook: back up a real PostgreSQL database, restore it into another one, compare every table.

Everything runs against PostgreSQL 15 on 127.0.0.1:5432 (and, where a password must
matter, a scram-sha-256 cluster the run starts itself): the real pg_dump, pg_restore,
the whole chain and ``backupctl`` as a user runs it.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import threading
import time
from datetime import datetime
from types import SimpleNamespace

import psycopg2
import pytest

from backup_tasks import client, defaults
from backup_tasks.ops import restore
from backup_tasks.records.catalog import Status
from backup_tasks.errors import SourceError
from backup_tasks.sources.postgres import client as pg_client, dump as pg_dump
from conftest import run_cli, write_config
from databases import (  # noqa: F401  (fixtures)
    ProcessWatch, free_port, make_pg_database, pg, pg_checksums, pg_names, pg_objects, scram_cluster, unique,
)


def pg_target(name: str, database: str, *, port: int = 5432, user: str = "postgres", extra: str = "") -> str:
    return f'[targets.{name}]\nkind = "postgres"\nhost = "db01"\ndsn = "postgresql://{user}@127.0.0.1:{port}/{database}"\n{extra}'


@pytest.fixture(scope="module")
def pg_backup(tmp_path_factory, session_keys):
    """A rich database backed up once through `backupctl backup --wait` for the tests of this module."""
    source = unique("bt_pgsrc")
    make_pg_database(source)
    base = tmp_path_factory.mktemp("pg")
    config = write_config(base / "targets.toml", session_keys, targets=pg_target("school-db", source))
    objects, sums = pg_objects(source), pg_checksums(source)
    done = run_cli("backup", "school-db", "--wait", "--json", config=config, check=0)
    info = json.loads(done.stdout)
    manifest = json.loads(run_cli("show", info["id"], "--json", config=config, check=0).stdout)["manifest"]
    yield SimpleNamespace(config=config, id=info["id"], info=info, source=source, sums=sums, objects=objects, manifest=manifest)
    with pg() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{source}" WITH (FORCE)')


def test_backup_records_exact_counts_and_verifies_the_archive(pg_backup):
    info, manifest = pg_backup.info, pg_backup.manifest
    assert info["status"] == Status.VERIFIED
    assert info["verification"]["ok"] and info["verification"]["detail"]["tables_checked"] == len(pg_backup.sums)
    src = manifest["source"]
    # every table with its exact count, schema-qualified (views are not tables)
    assert src["tables"] == {name: count for name, (count, _) in pg_backup.sums.items()}
    assert src["tables"]["public.orders"] == 2002 and src["tables"]["public.audit"] == 2002
    assert src["tables"]["reporting.Mixed Case"] == 50 and src["tables"]["public.empty_table"] == 0
    assert src["format"].startswith("pg_dump custom archive") and src["snapshot"]
    assert manifest["tool_versions"]["pg_dump"].startswith("15.") and manifest["tool_versions"]["postgresql_server"].startswith("15.")
    assert manifest["plaintext"]["format"] == "pgdump" and manifest["encryption"]["method"] == "age"
    assert manifest["locations"][0]["key"].endswith("/data.pgdump.zst.age")


def test_restore_to_database_round_trip_preserves_every_table_and_object(pg_backup, pg_names):
    dest = pg_names("bt_pgdst")
    done = run_cli("restore", pg_backup.id, "--to-database", dest, "--json", config=pg_backup.config, check=0)
    result = json.loads(done.stdout)
    assert result["database"] == dest and result["streamed"] is True and result["replaced_existing"] is False
    assert pg_checksums(dest) == pg_backup.sums  # every row of every table, byte for byte (bytea with all 256 values)
    assert pg_objects(dest) == pg_backup.objects  # sequence position, view, indexes, trigger, functions
    with pg(dest) as cur:
        cur.execute("SELECT nextval('customers_id_seq')")
        assert cur.fetchone()[0] == 1001  # the sequence continues where the source was
        cur.execute("INSERT INTO orders (customer_id, amount) VALUES (1, 5) RETURNING id")
        new_id = cur.fetchone()[0]
        cur.execute("SELECT action FROM audit WHERE order_id = %s", (new_id,))
        assert cur.fetchone()[0] == "INSERT"  # the trigger and its function came back
        with pytest.raises(psycopg2.errors.ForeignKeyViolation):
            cur.execute("INSERT INTO orders (customer_id) VALUES (999999)")
        cur.execute("SELECT payload FROM orders WHERE meta = '{\"all bytes\": true}'")
        assert bytes(cur.fetchone()[0]) == bytes(range(256))
    assert pg_client.MAINTENANCE_DB and not [d for d in _databases_like(dest) if "_restoring_" in d]  # no staging left


def _databases_like(prefix: str) -> list[str]:
    from databases import pg_databases

    return pg_databases(prefix)


def test_restore_refuses_an_occupied_database_dry_run_lists_and_force_replaces_in_parallel(pg_backup, pg_names):
    dest = pg_names("bt_pgocc")
    with pg() as cur:
        cur.execute(f'CREATE DATABASE "{dest}"')
    with pg(dest) as cur:
        cur.execute("CREATE TABLE precious (x int); INSERT INTO precious VALUES (42)")

    refused = run_cli("restore", pg_backup.id, "--to-database", dest, "--json", config=pg_backup.config, check=2)
    error = json.loads(refused.stdout)["error"]
    assert error["type"] == "RestoreRefused" and dest in error["message"] and "--force" in error["remedy"]
    with pg(dest) as cur:
        cur.execute("SELECT x FROM precious")
        assert cur.fetchone()[0] == 42  # untouched

    dry = json.loads(run_cli("restore", pg_backup.id, "--to-database", dest, "--dry-run", "--json", config=pg_backup.config,
                             check=0).stdout)
    assert dry["dry_run"] and dry["needs_force"] and dry["existing_tables"] == 1
    for entry in ("TABLE public orders", "TABLE DATA public orders", "VIEW public big_orders", "TRIGGER public orders orders_audit",
                  "FUNCTION public log_order()", "INDEX public orders_placed_idx", "FK CONSTRAINT public orders orders_customer_id_fkey",
                  "SEQUENCE SET public customers_id_seq"):
        assert entry in dry["objects"], entry
    with pg(dest) as cur:
        cur.execute("SELECT count(*) FROM precious")  # a dry run writes nothing

    forced = json.loads(run_cli("restore", pg_backup.id, "--to-database", dest, "--force", "--jobs", "2", "--json",
                                config=pg_backup.config, check=0).stdout)
    assert forced["replaced_existing"] and forced["jobs"] == 2 and forced["streamed"] is False
    assert pg_checksums(dest) == pg_backup.sums  # precious is gone: --force replaced the database


def test_single_table_restore_from_the_dump(pg_backup, pg_names):
    dest = pg_names("bt_pgone")
    done = run_cli("restore", pg_backup.id, "--to-database", dest, "--table", "reporting.Mixed Case", "--json",
                   config=pg_backup.config, check=0)
    assert json.loads(done.stdout)["tables_selected"] == ["reporting.Mixed Case"]
    assert pg_checksums(dest) == {"reporting.Mixed Case": pg_backup.sums["reporting.Mixed Case"]}


def test_restore_input_errors(pg_backup, pg_names):
    bad = run_cli("restore", pg_backup.id, "--to-database", "no;drop", "--json", config=pg_backup.config, check=2)
    assert "not a database name" in json.loads(bad.stdout)["error"]["message"]
    both = run_cli("restore", pg_backup.id, "--to-database", "x", "--to", "/tmp/x", "--json", config=pg_backup.config, check=2)
    assert "exactly one" in json.loads(both.stdout)["error"]["message"]
    inline = run_cli("restore", pg_backup.id, "--to-database", pg_names(), "--server", "postgresql://u:secret@127.0.0.1/postgres",
                     "--json", config=pg_backup.config, check=2)
    assert "contains a password" in inline.stdout and "secret" not in inline.stdout


def test_hot_backup_under_writes_restores_exactly_the_manifest_counts(tmp_path, make_config, runtime_for, pg_names):
    """A writer commits (one order + three lines per transaction) all through the dump."""
    source, dest = pg_names("bt_pghot"), pg_names("bt_pghotr")
    make_pg_database(source, """
        CREATE TABLE live_orders (id bigserial PRIMARY KEY, at timestamptz DEFAULT clock_timestamp());
        CREATE TABLE live_lines (order_id bigint REFERENCES live_orders(id), n int);
        CREATE TABLE filler (id int, body text);
        INSERT INTO filler SELECT g, md5(g::text) || md5((g * 7)::text) || repeat(md5(random()::text), 3) FROM generate_series(1, 400000) g;
    """)
    rt = runtime_for(make_config(pg_target("hot-db", source)))
    stop = threading.Event()
    commits: list[float] = []

    def writer():
        conn = psycopg2.connect(dbname=source, host="127.0.0.1", user="postgres")
        cur = conn.cursor()
        while not stop.is_set():
            cur.execute("INSERT INTO live_orders DEFAULT VALUES RETURNING id")
            oid = cur.fetchone()[0]
            cur.execute("INSERT INTO live_lines SELECT %s, g FROM generate_series(1, 3) g", (oid,))
            conn.commit()
            commits.append(time.time())
        conn.close()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        while len(commits) < 50:
            time.sleep(0.01)
        run = client.enqueue_backup("hot-db", rt=rt)
        info = run.wait(timeout=300)
        time.sleep(0.2)
    finally:
        stop.set()
        thread.join()
    assert info["status"] == Status.VERIFIED
    doc = rt.catalog.get(run.id).manifest
    counts = doc["source"]["tables"]
    started = datetime.fromisoformat(doc["created_at"].replace("Z", "+00:00")).timestamp()
    dump_end = started + doc["timings"]["dump"]
    during = [t for t in commits if started <= t <= dump_end]
    assert len(during) >= 5, "the writer must have committed while the dump ran"
    assert 50 <= counts["public.live_orders"] < len(commits)
    assert counts["public.live_lines"] == 3 * counts["public.live_orders"]

    restore.restore_to_database(rt, run.id, dest)
    with pg(dest) as cur:
        for table, expected in counts.items():
            schema, name = table.split(".")
            cur.execute(f'SELECT count(*) FROM "{schema}"."{name}"')
            assert cur.fetchone()[0] == expected, table


def _scram_db(port: int, superpass: str, owner: str, password: str, rows: int = 0) -> str:
    name = unique("bt_pw")
    with pg(port=port, password=superpass) as cur:
        cur.execute(f"DROP ROLE IF EXISTS {owner}")
        cur.execute(f"CREATE ROLE {owner} LOGIN PASSWORD %s", (password,))
        cur.execute(f'CREATE DATABASE "{name}" OWNER {owner}')
    with pg(name, port=port, user=owner, password=password) as cur:
        cur.execute("CREATE TABLE t (id int PRIMARY KEY, body text)")
        cur.execute(f"INSERT INTO t SELECT g, repeat(md5(g::text), 4) FROM generate_series(1, {rows}) g")
    return name


def test_password_reaches_pg_dump_only_through_a_private_file(scram_cluster, make_config, runtime_for, monkeypatch, caplog, tmp_path):
    port, superpass = scram_cluster
    password = "pw-" + unique("s3cr3t")
    database = _scram_db(port, superpass, "bt_backup_ok", password, rows=300000)
    monkeypatch.setenv("BT_PG_PASSWORD", password)
    # The worker's other secrets (another target's password, S3 keys) stay out of pg_dump's environment too.
    others = {"BT_OTHER_DB_PASSWORD": unique("other"), "BACKUP_S3_SECRET_ACCESS_KEY": unique("s3key")}
    for name, value in others.items():
        monkeypatch.setenv(name, value)
    rt = runtime_for(make_config(pg_target("secret-db", database, port=port, user="bt_backup_ok",
                                           extra='password = "env:BT_PG_PASSWORD"\n')))
    caplog.set_level(logging.DEBUG)
    with ProcessWatch(("pg_dump",)) as watch:
        run = client.enqueue_backup("secret-db", rt=rt)
        info = run.wait(timeout=120)
    assert info["status"] == Status.VERIFIED  # scram auth accepted: the password did reach pg_dump
    assert watch.seen_tool, "the process list was read while pg_dump ran"
    secret = password.encode()
    assert not [c for c in watch.cmdlines if secret in c]
    assert watch.environs and not [e for e in watch.environs if secret in e]  # not even in pg_dump's environment
    assert any(b"PGPASSFILE=" in e for e in watch.environs)
    assert not [e for e in watch.environs for v in others.values() if v.encode() in e]
    state = tmp_path / "state"
    leaked = [p for p in state.rglob("*") if p.is_file() and secret in p.read_bytes()]
    assert leaked == []  # catalog, manifests, artifacts (encrypted anyway), staging
    assert password not in caplog.text and password not in json.dumps(info)


def test_wrong_password_names_target_and_host_and_never_the_password(scram_cluster, make_config, runtime_for, monkeypatch, caplog):
    port, superpass = scram_cluster
    right = "pw-" + unique("right")
    database = _scram_db(port, superpass, "bt_backup_wrong", right)
    wrong = "pw-" + unique("wrong")
    monkeypatch.setenv("BT_PG_WRONG", wrong)
    rt = runtime_for(make_config(pg_target("wrong-db", database, port=port, user="bt_backup_wrong",
                                           extra='password = "env:BT_PG_WRONG"\n')))
    caplog.set_level(logging.DEBUG)
    run = client.enqueue_backup("wrong-db", rt=rt)
    info = run.info()
    assert info["status"] == Status.FAILED
    assert "'wrong-db'" in info["error"] and f"127.0.0.1:{port}" in info["error"]
    assert "password authentication failed for user 'bt_backup_wrong'" in info["error"]
    events = rt.catalog.events(kind="chain.failed")
    assert len(events) == 1 and "env:BT_PG_WRONG" in events[0].detail["remedy"]
    for text in (info["error"], json.dumps(events[0].detail), events[0].message, caplog.text):
        assert wrong not in text and right not in text
    assert "unreachable" not in caplog.text  # a wrong password is permanent: not retried


def test_unreachable_server_is_retried_then_the_run_fails(make_config, runtime_for, caplog):
    port = free_port()  # nothing listens here
    rt = runtime_for(make_config(pg_target("down-db", "school", port=port)))
    caplog.set_level(logging.WARNING, logger="backup_tasks.sources.db.connection")
    run = client.enqueue_backup("down-db", rt=rt)
    info = run.info()
    assert info["status"] == Status.FAILED
    assert f"PostgreSQL on 127.0.0.1:{port} is unreachable" in info["error"]
    attempts = [r for r in caplog.records if r.name == "backup_tasks.sources.db.connection" and "unreachable" in r.getMessage()]
    # ServiceUnavailable is a TransientError: the dump stage is retried TASK_MAX_RETRIES times, then the run fails.
    # (Embedded, backup.start also retries the eager chain it ran, so the count multiplies; hence >=.)
    assert len(attempts) >= 1 + defaults.TASK_MAX_RETRIES
    assert rt.catalog.events(kind="chain.failed")[0].detail["error_type"] == "ServiceUnavailable"


def test_missing_database_fails_once_with_its_name(make_config, runtime_for, caplog):
    rt = runtime_for(make_config(pg_target("gone-db", "bt_no_such_database")))
    run = client.enqueue_backup("gone-db", rt=rt)
    info = run.info()
    assert info["status"] == Status.FAILED
    assert "database 'bt_no_such_database' does not exist on 127.0.0.1:5432" in info["error"]
    assert list(rt.storage("local").list("")) == []


def test_pg_dump_older_than_the_server_is_refused_with_a_clear_error():
    # real version strings, as pg_dump --version and servers print them
    assert pg_dump.parse_version("pg_dump (PostgreSQL) 15.20 (Debian 15.20-0+deb12u1)") == (15, 0)
    assert pg_dump.parse_version("pg_dump (PostgreSQL) 9.6.24") == (9, 6)
    assert pg_dump.parse_version("pg_dump (PostgreSQL) 17beta2") == (17, 0)
    assert pg_dump.server_major(90624) == (9, 6) and pg_dump.server_major(160004) == (16, 0)
    pg_dump.check_client_version("pg_dump (PostgreSQL) 16.4", 150020)  # newer client: fine
    pg_dump.check_client_version("pg_dump (PostgreSQL) 15.2", 150020)  # same major, older minor: fine
    pg_dump.check_client_version("pg_dump (PostgreSQL) 10.23", 90624)  # 10 is newer than 9.6
    with pytest.raises(SourceError) as err:
        pg_dump.check_client_version("pg_dump (PostgreSQL) 14.13 (Ubuntu 14.13-0ubuntu0.22.04.1)", 160004, target="school-db",
                                     address="db01:5432")
    assert err.value.message == "dump of target 'school-db' failed: pg_dump 14 is older than the PostgreSQL 16 server on db01:5432"
    assert "PostgreSQL 16 client tools" in err.value.remedy
    # and the real check against the running server with the installed pg_dump passes
    with pg() as cur:
        cur.execute("SELECT current_setting('server_version_num')::int")
        pg_dump.check_client_version(pg_client.tool_version(pg_client.tool("pg_dump")), cur.fetchone()[0])


def test_debian_pg_wrapper_is_skipped_for_the_newest_installed_binary_it_would_run(tmp_path):
    # Debian's /usr/bin/pg_* link to a Perl script that, given a server host, execs the newest version's binary
    wrapper = tmp_path / "share" / pg_client.DEBIAN_WRAPPER
    wrapper.parent.mkdir()
    wrapper.write_text("#!/usr/bin/perl\n")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "pg_dump").symlink_to(wrapper)
    binroot = tmp_path / "lib"
    for version, tools in (("9.6", ["pg_dump"]), ("15", ["pg_dump", "psql"]), ("16", ["psql"]), ("16.x", ["pg_dump"])):
        (binroot / version / "bin").mkdir(parents=True)
        for name in tools:
            (binroot / version / "bin" / name).write_text("")
            (binroot / version / "bin" / name).chmod(0o755)
    linked = str(tmp_path / "bin" / "pg_dump")
    assert pg_client.unwrapped(linked, "pg_dump", binroot) == str(binroot / "15" / "bin" / "pg_dump")  # 16 has no pg_dump
    assert pg_client.unwrapped(linked, "psql", binroot) == str(binroot / "16" / "bin" / "psql")
    assert pg_client.unwrapped(linked, "pg_restore", binroot) == linked  # none installed: the wrapper decides
    plain = tmp_path / "bin" / "pg_restore"
    plain.write_text("")
    assert pg_client.unwrapped(str(plain), "pg_restore", binroot) == str(plain)  # not the wrapper: as found
    # on this host: whatever PATH finds, what runs is a real pg_dump binary, not the wrapper
    assert pg_client.unwrapped(pg_client.tool("pg_dump"), "pg_dump").endswith("/pg_dump")
    assert os.path.basename(os.path.realpath(pg_client.tool("pg_dump"))) == "pg_dump"


@pytest.mark.parametrize("extra, field, words", [
    ('options = { globals = "yes" }\n', "options.globals", "must be true, false"),
    ('options = { tables = ["public.*"] }\n', "options.tables", "exact names"),
    ('options = { shards = 2 }\n', "options", "unknown postgres option"),
    ('drill = { server = "mysql://root@127.0.0.1/x" }\n', "drill.server", "must start with postgresql://"),
    ('drill = { server = "postgresql://d@h/postgres", checks = "" }\n', "drill.checks", "list of SQL"),
])
def test_database_target_settings_are_checked_when_the_config_loads(make_config, extra, field, words):
    path = make_config(pg_target("school-db", "school", extra=extra))
    error = json.loads(run_cli("targets", "--json", config=path, check=2).stdout)["error"]
    assert f"field '{field}'" in error["message"] and words in error["message"] and "target 'school-db'" in error["message"]


def test_a_password_in_the_dsn_is_refused_without_echoing_it(make_config):
    path = make_config('[targets.x]\nkind = "postgres"\ndsn = "postgresql://u:hunter2@127.0.0.1/school"\n')
    done = run_cli("targets", "--json", config=path, check=2)
    assert "contains a password" in done.stdout and "hunter2" not in done.stdout + done.stderr


def test_restore_to_a_path_writes_the_plain_archive_for_pg_restore_by_hand(pg_backup, tmp_path):
    out = tmp_path / "school.pgdump"
    done = json.loads(run_cli("restore", pg_backup.id, "--to", str(out), "--json", config=pg_backup.config, check=0).stdout)
    assert done["next_step"] == f"pg_restore -d DATABASE {out}"  # the file as it is now, not the private sibling
    listing = subprocess.run(["pg_restore", "--list", str(out)], capture_output=True, text=True, check=True).stdout
    assert "TABLE DATA public orders" in listing and oct(out.stat().st_mode & 0o777) == "0o600"


@pytest.mark.parametrize("param", ["password=hunter2", "sslpassword=hunter2", "passfile=/root/.pgpass"])
def test_a_secret_parameter_in_the_dsn_is_refused_without_echoing_it(make_config, param):
    path = make_config(f'[targets.x]\nkind = "postgres"\ndsn = "postgresql://u@127.0.0.1/school?sslmode=require&{param}"\n')
    done = run_cli("targets", "--json", config=path, check=2)
    assert "secret parameter" in done.stdout and param.split("=")[0] in done.stdout and "hunter2" not in done.stdout + done.stderr
