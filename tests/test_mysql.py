"""Runbook: back up a real MariaDB database, restore it into another one, compare every table.

MariaDB 10.11 on 127.0.0.1:3306 with the real mariadb-dump and mariadb client; users with
passwords are created per test, because MariaDB really checks them.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from types import SimpleNamespace

import pymysql
import pytest

from backup_tasks import client
from backup_tasks.ops import restore
from backup_tasks.records.catalog import Status
from conftest import run_cli, write_config
from databases import ProcessWatch, make_my_database, my, my_checksums, my_names, my_objects, unique  # noqa: F401


def my_target(name: str, database: str, *, user: str = "root", extra: str = "") -> str:
    return f'[targets.{name}]\nkind = "mysql"\nhost = "db02"\ndsn = "mysql://{user}@127.0.0.1:3306/{database}"\n{extra}'


@pytest.fixture(scope="module")
def my_backup(tmp_path_factory, session_keys):
    source = unique("bt_mysrc")
    make_my_database(source)
    base = tmp_path_factory.mktemp("my")
    config = write_config(base / "targets.toml", session_keys, targets=my_target("shop-db", source))
    objects, sums = my_objects(source), my_checksums(source)
    done = run_cli("backup", "shop-db", "--wait", "--json", config=config, check=0)
    info = json.loads(done.stdout)
    manifest = json.loads(run_cli("show", info["id"], "--json", config=config, check=0).stdout)["manifest"]
    yield SimpleNamespace(config=config, id=info["id"], info=info, source=source, sums=sums, objects=objects, manifest=manifest)
    with my() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS `{source}`")


@pytest.fixture
def my_user():
    """A MariaDB user with a password and the privileges a backup needs; dropped afterwards."""
    made = []

    def make(database: str, password: str) -> str:
        user = unique("btu")[:16]
        with my() as cur:
            for host in ("%", "localhost"):
                cur.execute(f"CREATE USER '{user}'@'{host.replace('%', '%%')}' IDENTIFIED BY %s", (password,))
                cur.execute(f"GRANT ALL ON `{database}`.* TO '{user}'@'{host}'")
                cur.execute(f"GRANT RELOAD, PROCESS ON *.* TO '{user}'@'{host}'")
                cur.execute(f"GRANT SELECT ON mysql.* TO '{user}'@'{host}'")
        made.append(user)
        return user

    yield make
    with my() as cur:
        for user in made:
            for host in ("%", "localhost"):
                cur.execute(f"DROP USER IF EXISTS '{user}'@'{host}'")


def test_backup_records_counts_views_and_verifies_the_dump(my_backup):
    info, src = my_backup.info, my_backup.manifest["source"]
    assert info["status"] == Status.VERIFIED and info["verification"]["detail"]["statements"] == "complete"
    assert src["tables"] == {name: count for name, (count, _) in my_backup.sums.items()}
    assert src["tables"]["orders"] == 2002 and src["tables"]["audit"] == 2002 and src["tables"]["empty_table"] == 0
    assert src["views"] == ["big_orders"]
    assert "binlog" in src  # None here: the loopback server runs without a binary log
    assert src["format"].startswith("SQL (mariadb-dump --single-transaction --routines --triggers --events --hex-blob")
    assert my_backup.manifest["plaintext"]["format"] == "sql"
    # the tool's own words (asked while connecting) and the server's version, as the manifest records them
    assert "mariadb-dump" in my_backup.manifest["tool_versions"]["mariadb-dump"] and my_backup.manifest["tool_versions"]["mysql_server"]


def test_restore_to_database_round_trip_preserves_every_table_and_object(my_backup, my_names):
    dest = my_names("bt_mydst")
    result = json.loads(run_cli("restore", my_backup.id, "--to-database", dest, "--json", config=my_backup.config, check=0).stdout)
    assert result["database"] == dest and result["replaced_existing"] is False
    assert my_checksums(dest) == my_backup.sums  # every row; the BLOB with all 256 byte values; JSON, DECIMAL(38,12), TIMESTAMP(6)
    assert my_objects(dest) == my_backup.objects  # AUTO_INCREMENT, view, function, procedure, trigger, indexes
    with my(dest) as cur:
        cur.execute("CALL add_customer('after restore')")
        cur.execute("SELECT id FROM customers WHERE name = 'after restore'")
        assert cur.fetchone()[0] == 1000  # AUTO_INCREMENT continues where the source was
        cur.execute("INSERT INTO orders (customer_id, amount) VALUES (1, 5)")
        cur.execute("SELECT action FROM audit WHERE order_id = LAST_INSERT_ID()")
        assert cur.fetchone()[0] == "INSERT"
        with pytest.raises(pymysql.err.IntegrityError):
            cur.execute("INSERT INTO orders (customer_id) VALUES (999999)")
        cur.execute("SELECT payload FROM orders WHERE amount > 1e19")
        assert cur.fetchone()[0] == bytes(range(256))


def test_restore_refuses_an_occupied_database_dry_run_summarizes_and_force_replaces(my_backup, my_names):
    dest = my_names("bt_myocc")
    with my() as cur:
        cur.execute(f"CREATE DATABASE `{dest}`")
        cur.execute(f"CREATE TABLE `{dest}`.precious (x INT)")
        cur.execute(f"INSERT INTO `{dest}`.precious VALUES (42)")
    refused = run_cli("restore", my_backup.id, "--to-database", dest, "--json", config=my_backup.config, check=2)
    assert json.loads(refused.stdout)["error"]["type"] == "RestoreRefused"
    with my(dest) as cur:
        cur.execute("SHOW TABLES")
        assert cur.fetchall() == (("precious",),)

    dry = json.loads(run_cli("restore", my_backup.id, "--to-database", dest, "--dry-run", "--json", config=my_backup.config,
                             check=0).stdout)
    assert dry["needs_force"] and dry["complete"]
    assert dry["objects"]["tables"] == ["audit", "customers", "empty_table", "orders"]
    assert dry["objects"]["views"] == ["big_orders"] and dry["objects"]["triggers"] == ["orders_audit"]
    assert dry["objects"]["routines"] == ["add_customer", "order_total"]
    assert dry["insert_statements"]["orders"] >= 1

    run_cli("restore", my_backup.id, "--to-database", dest, "--force", "--json", config=my_backup.config, check=0)
    sums = my_checksums(dest)
    assert {k: v for k, v in sums.items() if k != "precious"} == my_backup.sums


def test_password_reaches_the_dump_tool_only_through_a_private_option_file(tmp_path, make_config, runtime_for, my_names, my_user,
                                                                          monkeypatch, caplog):
    database = my_names("bt_mypw")
    make_my_database(database, rows=60000)
    password = "pw-" + unique("s3cr3t")
    user = my_user(database, password)
    monkeypatch.setenv("BT_MY_PASSWORD", password)
    rt = runtime_for(make_config(my_target("secret-my", database, user=user, extra='password = "env:BT_MY_PASSWORD"\n')))
    caplog.set_level(logging.DEBUG)
    with ProcessWatch(("mariadb-dump", "mysqldump")) as watch:
        run = client.enqueue_backup("secret-my", rt=rt)
        info = run.wait(timeout=120)
    assert info["status"] == Status.VERIFIED  # MariaDB accepted the password: it reached the tool
    assert watch.seen_tool
    secret = password.encode()
    assert not [c for c in watch.cmdlines if secret in c]
    assert not [e for e in watch.environs if secret in e]
    assert [c for c in watch.cmdlines if b"--defaults-extra-file=" in c]
    assert [p for p in (tmp_path / "state").rglob("*") if p.is_file() and secret in p.read_bytes()] == []
    assert password not in caplog.text


def test_wrong_password_names_target_and_host_and_never_the_password(make_config, runtime_for, my_names, my_user, monkeypatch, caplog):
    database = my_names("bt_mywrong")
    with my() as cur:
        cur.execute(f"CREATE DATABASE `{database}`")
    right, wrong = "pw-" + unique("right"), "pw-" + unique("wrong")
    user = my_user(database, right)
    monkeypatch.setenv("BT_MY_WRONG", wrong)
    rt = runtime_for(make_config(my_target("wrong-my", database, user=user, extra='password = "env:BT_MY_WRONG"\n')))
    caplog.set_level(logging.DEBUG)
    info = client.enqueue_backup("wrong-my", rt=rt).info()
    assert info["status"] == Status.FAILED
    assert "'wrong-my'" in info["error"] and "127.0.0.1:3306" in info["error"] and f"access denied for user '{user}'" in info["error"]
    event = rt.catalog.events(kind="chain.failed")[0]
    for text in (info["error"], event.message, json.dumps(event.detail), caplog.text):
        assert wrong not in text and right not in text


def test_missing_database_fails_with_its_name(make_config, runtime_for):
    rt = runtime_for(make_config(my_target("gone-my", "bt_no_such_db")))
    info = client.enqueue_backup("gone-my", rt=rt).info()
    assert info["status"] == Status.FAILED
    assert "database 'bt_no_such_db' does not exist on 127.0.0.1:3306" in info["error"]


def test_hot_backup_under_writes_has_exact_counts(make_config, runtime_for, my_names):
    """The lock-then-snapshot hand-off: counts in the manifest equal what the dump restores, under writes."""
    source, dest = my_names("bt_myhot"), my_names("bt_myhotr")
    make_my_database(source, rows=20000)
    with my(source) as cur:
        cur.execute("CREATE TABLE live (id INT AUTO_INCREMENT PRIMARY KEY, n INT)")
        cur.execute("CREATE TABLE live_lines (live_id INT, n INT)")
    rt = runtime_for(make_config(my_target("hot-my", source)))
    stop = threading.Event()
    commits = []

    def writer():
        conn = pymysql.connect(host="127.0.0.1", user="root", database=source, autocommit=False)
        cur = conn.cursor()
        while not stop.is_set():
            cur.execute("INSERT INTO live (n) VALUES (1)")
            cur.execute("INSERT INTO live_lines VALUES (LAST_INSERT_ID(), 1), (LAST_INSERT_ID(), 2)")
            conn.commit()
            commits.append(time.time())
        conn.close()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        while len(commits) < 50:
            time.sleep(0.01)
        run = client.enqueue_backup("hot-my", rt=rt)
        info = run.wait(timeout=120)
        time.sleep(0.1)
    finally:
        stop.set()
        thread.join()
    assert info["status"] == Status.VERIFIED
    counts = rt.catalog.get(run.id).manifest["source"]["tables"]
    assert 50 <= counts["live"] < len(commits) and counts["live_lines"] == 2 * counts["live"]
    restore.restore_to_database(rt, run.id, dest)
    with my(dest) as cur:
        for table, expected in counts.items():
            cur.execute(f"SELECT COUNT(*) FROM `{table}`")
            assert cur.fetchone()[0] == expected, table



def test_a_forced_restore_over_a_database_reads_a_damaged_artifact_in_full_before_touching_it(tmp_path, session_keys, my_names):
    source, dest = my_names("bt_mydmgsrc"), my_names("bt_mydmg")
    with my() as cur:
        cur.execute(f"CREATE DATABASE `{source}`")
        cur.execute(f"CREATE TABLE `{source}`.a_first (id INT PRIMARY KEY, note VARCHAR(40))")
        cur.execute(f"INSERT INTO `{source}`.a_first VALUES (1, 'as backed up'), (2, 'as backed up')")
        cur.execute(f"CREATE TABLE `{source}`.bulk (id INT PRIMARY KEY, body TEXT)")
    with my(source) as cur:
        for start in range(0, 12000, 1000):  # ~4.6 MB of hex that compresses about 2x: several MiB of plaintext
            cur.execute(f"INSERT INTO `{source}`.bulk SELECT seq, CONCAT(MD5(RAND()), MD5(RAND()), MD5(RAND()), "
                        f"MD5(RAND()), MD5(RAND()), MD5(RAND()), MD5(RAND()), MD5(RAND()), MD5(RAND()), MD5(RAND()), "
                        f"MD5(RAND()), MD5(RAND())) FROM seq_{start + 1}_to_{start + 1000}")
    config = write_config(tmp_path / "targets.toml", session_keys, targets=my_target("dmg-db", source))
    info = json.loads(run_cli("backup", "dmg-db", "--wait", "--json", config=config, check=0).stdout)
    run_cli("restore", info["id"], "--to-database", dest, "--json", config=config, check=0)
    with my(dest) as cur:  # a_first is the dump's first table: a load that starts drops it and brings the old row back
        cur.execute("UPDATE a_first SET note = 'changed since the backup' WHERE id = 1")
    before = my_checksums(dest)
    [artifact] = (tmp_path / "state" / "store").rglob("data.sql.zst.age")
    good = artifact.read_bytes()
    plain_size = json.loads(run_cli("show", info["id"], "--json", config=config, check=0).stdout)["size_plain"]
    assert plain_size > 3 << 20  # the load reads 1 MiB at a time: the first MiBs reach the server before the damage
    artifact.write_bytes(good[:-200] + bytes([good[-200] ^ 0x01]) + good[-199:])

    failed = json.loads(run_cli("restore", info["id"], "--to-database", dest, "--force", "--json", config=config, check=1).stdout)
    assert failed["error"]["type"] == "VerificationFailed"
    assert my_checksums(dest) == before  # nothing was dropped or reloaded
