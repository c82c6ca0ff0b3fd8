"""Runbook: the cluster is gone, roles and all. Rebuild the roles from the backup, then the database with its owners and GRANTs."""

from __future__ import annotations

import base64
import json
import stat
import subprocess

import pytest

from backup_tasks.records import keys, manifest
from backup_tasks.ops import backup
from backup_tasks.sources.postgres import cluster_globals
from conftest import run_cli, write_config
from databases import pg, pg_names, unique  # noqa: F401  (fixture)
from test_postgres import pg_target

PASSWORD = "globals-hunter2-секрет"


def _role_state(role: str) -> tuple | None:
    with pg() as cur:
        cur.execute("SELECT rolcanlogin, rolpassword, rolconnlimit FROM pg_authid WHERE rolname = %s", (role,))
        return cur.fetchone()


def _drop_roles(*roles: str) -> None:
    with pg() as cur:
        for role in roles:
            cur.execute(f'DROP ROLE IF EXISTS "{role}"')


@pytest.fixture
def cluster_with_roles(pg_names):
    owner, reader = unique("bt_owner"), unique("bt_reader")
    source = pg_names("bt_glsrc")
    with pg() as cur:
        cur.execute(f"CREATE ROLE \"{owner}\" LOGIN CONNECTION LIMIT 7 PASSWORD %s", (PASSWORD,))
        cur.execute(f'CREATE ROLE "{reader}" NOLOGIN')
        cur.execute(f'CREATE DATABASE "{source}" OWNER "{owner}"')
    with pg(source) as cur:
        cur.execute(f'SET ROLE "{owner}"')
        cur.execute("CREATE TABLE ledger (id int PRIMARY KEY, amount numeric(20, 6))")
        cur.execute("INSERT INTO ledger SELECT g, g * 1.5 FROM generate_series(1, 300) g")
        cur.execute(f'GRANT SELECT ON ledger TO "{reader}"')
    yield owner, reader, source
    with pg() as cur:  # first every database holding something of the test's roles (only this test's own)
        for db in _databases_depending_on(cur, owner, reader):
            cur.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
    _drop_roles(reader, owner)


def _databases_depending_on(cur, *roles: str) -> list[str]:
    cur.execute("SELECT datname FROM pg_database d JOIN pg_roles r ON r.oid = d.datdba WHERE r.rolname = ANY(%s) "
                "UNION SELECT d.datname FROM pg_shdepend s JOIN pg_database d ON d.oid = s.dbid "
                "JOIN pg_roles r ON r.oid = s.refobjid WHERE r.rolname = ANY(%s)", (list(roles), list(roles)))
    return [r[0] for r in cur.fetchall()]


def test_roles_and_grants_come_back_from_the_backup_after_the_cluster_lost_them(tmp_path, session_keys, pg_names,
                                                                                 cluster_with_roles):
    owner, reader, source = cluster_with_roles
    hashed_before = _role_state(owner)
    config = write_config(tmp_path / "targets.toml", session_keys,
                          targets=pg_target("ledger-db", source, extra="options = { globals = true }\n"))
    info = json.loads(run_cli("backup", "ledger-db", "--wait", "--json", config=config, check=0).stdout)
    assert info["status"] == "verified" and info["verification"]["detail"]["attachments_checked"] == ["globals.sql"]
    shown = run_cli("show", info["id"], "--json", config=config, check=0).stdout
    globals_report = json.loads(shown)["manifest"]["source"]["globals"]
    assert {owner, reader} <= set(globals_report["roles"]) and globals_report["role_passwords"] is True
    attachment = json.loads(shown)["manifest"]["attachments"]["globals.sql"]
    assert "data" not in attachment and attachment["encoding"] == "age+base64"  # the catalog keeps no ciphertext
    assert PASSWORD not in shown and hashed_before[1] not in shown

    # The disaster: the database and both roles are gone.
    with pg() as cur:
        cur.execute(f'DROP DATABASE "{source}" WITH (FORCE)')
    _drop_roles(reader, owner)
    assert _role_state(owner) is None

    dest = pg_names("bt_gldst")
    plan = json.loads(run_cli("restore", info["id"], "--to-database", dest, "--with-globals", "--dry-run", "--json",
                              config=config, check=0).stdout)
    assert {owner, reader} <= set(plan["globals"]["roles_created"]) and "postgres" in plan["globals"]["roles_existing"]
    assert _role_state(owner) is None  # a dry run creates nothing

    done = json.loads(run_cli("restore", info["id"], "--to-database", dest, "--with-globals", "--json",
                              config=config, check=0).stdout)
    assert done["owners_and_grants"] is True and done["globals"]["already_existed_errors"] >= 1  # at least postgres itself
    assert _role_state(owner) == hashed_before  # LOGIN, the same SCRAM verifier, the connection limit
    with pg(dest) as cur:
        cur.execute("SELECT tableowner FROM pg_tables WHERE tablename = 'ledger'")
        assert cur.fetchone()[0] == owner
        cur.execute("SELECT has_table_privilege(%s, 'ledger', 'SELECT'), count(*), sum(amount) FROM ledger", (reader,))
        assert cur.fetchone() == (True, 300, 67725)
    audit = json.loads(run_cli("audit", "--action", "restore", "--json", config=config, check=0).stdout)
    assert audit[0]["outcome"] == "ok" and audit[0]["detail"]["globals"] is True


def test_globals_sql_can_be_written_for_review_and_recovered_without_our_code(tmp_path, session_keys, cluster_with_roles):
    owner, reader, source = cluster_with_roles
    config = write_config(tmp_path / "targets.toml", session_keys,
                          targets=pg_target("ledger-db", source, extra='options = { globals = "no-role-passwords" }\n'))
    info = json.loads(run_cli("backup", "ledger-db", "--wait", "--json", config=config, check=0).stdout)
    out = tmp_path / "review" / "globals.sql"
    result = json.loads(run_cli("restore", info["id"], "--globals-to", str(out), "--json", config=config, check=0).stdout)
    assert owner in result["roles"] and stat.S_IMODE(out.stat().st_mode) == 0o600
    sql = out.read_text()
    assert f'CREATE ROLE {owner};' in sql and "PASSWORD" not in sql  # no-role-passwords: no hashes at all
    run_cli("restore", info["id"], "--globals-to", str(out), "--json", config=config, check=2)  # exists: needs --force

    # Disaster without our code: the signed manifest in storage, base64 and the age CLI.
    store = tmp_path / "state" / "store"
    doc = json.loads((store / manifest.manifest_key("ledger-db", info["id"])).read_bytes())
    sealed = base64.b64decode(doc["attachments"]["globals.sql"]["data"])
    plain = subprocess.run(["age", "-d", "-i", str(session_keys / keys.IDENTITY_FILE)], input=sealed, capture_output=True, check=True)
    assert plain.stdout.decode() == sql


def test_globals_refuse_to_be_stored_unencrypted(tmp_path, cluster_with_roles):
    _, _, source = cluster_with_roles
    signing = tmp_path / "k"
    keys.generate(signing)
    config = write_config(tmp_path / "targets.toml", None, targets=pg_target("ledger-db", source, extra="options = { globals = true }\n"),
                          settings=f'signing_key_file = "{signing / keys.SIGNING_KEY_FILE}"\n')
    failed = json.loads(run_cli("backup", "ledger-db", "--wait", "--json", config=config, check=1).stdout)
    assert failed["status"] == "failed" and "must be encrypted" in failed["error"]
    assert not any(p.name == "globals.sql" for p in (tmp_path / "state").rglob("*"))  # no plaintext left in staging


def test_a_dump_redelivered_after_a_dead_attempt_starts_from_a_clean_workdir(tmp_path, session_keys, cluster_with_roles,
                                                                             runtime_for):
    _, _, source = cluster_with_roles
    config = write_config(tmp_path / "targets.toml", session_keys,
                          targets=pg_target("ledger-db", source, extra='options = { globals = "no-role-passwords" }\n'))
    rt = runtime_for(config)
    ref = backup.start(rt, "ledger-db-redelivered", "ledger-db", "full")
    # The worker died while pg_dumpall was writing: its half file is still in the stage's workdir.
    leftover = rt.run_dir(ref["backup_id"]) / "work" / "attachments" / "globals.sql"
    leftover.parent.mkdir(parents=True, mode=0o700)
    leftover.write_text("-- half of a globals file\nCREATE ROLE ")

    done = backup.dump(rt, ref)  # the redelivered stage

    sealed = json.loads((rt.run_dir(ref["backup_id"]) / "attachments.json").read_text())["globals.sql"]
    assert sealed["size"] > 100 and not (rt.run_dir(ref["backup_id"]) / "work").exists()
    assert done["size"] > 0


def test_on_a_live_cluster_existing_roles_are_kept_unless_forced_and_a_refused_restore_changes_no_role(
        tmp_path, session_keys, pg_names, cluster_with_roles):
    owner, reader, source = cluster_with_roles
    config = write_config(tmp_path / "targets.toml", session_keys,
                          targets=pg_target("ledger-db", source, extra="options = { globals = true }\n"))
    info = json.loads(run_cli("backup", "ledger-db", "--wait", "--json", config=config, check=0).stdout)
    backed_up = _role_state(owner)
    # Since the backup, ops rotated the owner's password and took the reader out of a group it was in.
    with pg() as cur:
        cur.execute(f'ALTER ROLE "{owner}" PASSWORD %s CONNECTION LIMIT 3', ("rotated-" + PASSWORD,))
    rotated = _role_state(owner)
    assert rotated != backed_up

    # Restoring over the live, non-empty source database without --force: refused, and no role was touched.
    refused = json.loads(run_cli("restore", info["id"], "--to-database", source, "--with-globals", "--json",
                                 config=config, check=2).stdout)
    assert "refusing to overwrite" in refused["error"]["message"] and _role_state(owner) == rotated

    # Into a new database without --force: the existing roles are kept as they are.
    plan = json.loads(run_cli("restore", info["id"], "--to-database", pg_names("bt_glkeep"), "--with-globals", "--dry-run",
                              "--json", config=config, check=0).stdout)["globals"]
    assert f"ALTER ROLE {owner}" in plan["statements_skipped"] and "kept as they are" in plan["existing"]
    assert not any(PASSWORD in s or "SCRAM" in s for s in plan["statements_skipped"])
    kept = json.loads(run_cli("restore", info["id"], "--to-database", pg_names("bt_glkeep"), "--with-globals", "--json",
                              config=config, check=0).stdout)
    assert kept["owners_and_grants"] is True and _role_state(owner) == rotated

    # --force resets them to the backup's state: the old verifier and connection limit come back.
    json.loads(run_cli("restore", info["id"], "--to-database", pg_names("bt_glforce"), "--with-globals", "--force", "--json",
                       config=config, check=0).stdout)
    assert _role_state(owner) == backed_up


def test_statements_about_existing_roles_are_found_whatever_they_hold():
    sql = ('\\restrict abc\n--\n-- Roles\n--\n\nCREATE ROLE app;\n'
           "ALTER ROLE app WITH LOGIN PASSWORD 'SCRAM-SHA-256$4096:a;b==';\n"
           "COMMENT ON ROLE app IS 'two\nlines; with a '' quote';\n"
           'CREATE ROLE "New ""Role""";\nALTER ROLE "New ""Role""" WITH NOLOGIN;\n'
           "ALTER ROLE app SET search_path TO 'a;b';\nGRANT \"New \"\"Role\"\"\" TO app GRANTED BY postgres;\n"
           'GRANT app TO "New ""Role""" GRANTED BY postgres;\n'
           "CREATE TABLESPACE ts OWNER app LOCATION '/srv/ts';\nALTER TABLESPACE ts SET (random_page_cost=1.1);\n"
           "\\unrestrict abc\n")
    text, skipped = cluster_globals.keeping_existing(sql, {"app"}, {"ts"})
    assert skipped == ["ALTER ROLE app", "COMMENT ON ROLE app", "ALTER ROLE app", 'GRANT "New ""Role""" TO app',
                       "ALTER on tablespace ts"]
    assert text == ('\\restrict abc\n--\n-- Roles\n--\n\nCREATE ROLE app;\nCREATE ROLE "New ""Role""";\n'
                    'ALTER ROLE "New ""Role""" WITH NOLOGIN;\nGRANT app TO "New ""Role""" GRANTED BY postgres;\n'
                    "CREATE TABLESPACE ts OWNER app LOCATION '/srv/ts';\n\\unrestrict abc\n")
    assert cluster_globals.keeping_existing(sql, set(), set()) == (sql, [])
