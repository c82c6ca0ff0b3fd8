"""Runbook: a database password that URL-encodes, a failing tool that prints the encoded DSN, and no trace anywhere.

A client tool's stderr is not ours: it may echo a connection URI with the password
percent-encoded. The run fails on a real worker through real Redis; then the catalog
(run error, events, audit), the worker's log and every key in Redis are searched for
the password in plain and in every usual encoding.
"""

from __future__ import annotations

import re
import sqlite3
import stat
import textwrap
from urllib.parse import quote, quote_plus

import redis

from backup_tasks import client
from backup_tasks.records.catalog import Status
from conftest import run_cli
from databases import pg, pg_names  # noqa: F401  (fixture)

PASSWORD = "p@ss!w0rd%"

#: pg_dump that fails the way a client can: quoting the connection URI it used, password percent-encoded.
#: It reads the password from the PGPASSFILE the worker gave it, so the leak is the real one.
FAILING_PG_DUMP = textwrap.dedent("""\
    #!/bin/sh
    if [ "$1" = "--version" ]; then exec /usr/lib/postgresql/15/bin/pg_dump "$@"; fi
    exec python3 -c '
    import os, sys, urllib.parse
    password = open(os.environ["PGPASSFILE"]).read().rstrip("\\n").split(":", 4)[4]
    database = sys.argv[sys.argv.index("-d") + 1]
    uri = "postgresql://%s:%s@%s:%s/%s" % (os.environ["PGUSER"], urllib.parse.quote(password, safe=""),
                                           os.environ["PGHOST"], os.environ["PGPORT"], database)
    sys.stderr.write("pg_dump: error: connection to \\"%s\\" failed: FATAL:  remaining connection slots are reserved\\n" % uri)
    sys.stderr.write("pg_dump: detail: keyword form was user=%s password=%s\\n"
                     % (os.environ["PGUSER"], urllib.parse.quote(password, safe="!")))
    sys.exit(1)
    ' "$@"
    """)


def encoded_forms(secret: str) -> set[str]:
    forms = {secret, quote(secret, safe=""), quote(secret), quote_plus(secret), quote(secret, safe="!")}
    lower_hex = {re.sub(r"%[0-9A-F]{2}", lambda m: m.group().lower(), f) for f in forms}
    return forms | lower_hex | {f.replace("%", "%25") for f in forms if "%" in f} - {""}


def redis_text(r: redis.Redis) -> str:
    """Every value of every key, as text (DUMP compresses, so it cannot be searched)."""
    parts: list[bytes] = []
    for key in r.scan_iter("*"):
        kind = r.type(key)
        if kind == b"string":
            parts.append(r.get(key) or b"")
        elif kind == b"list":
            parts += r.lrange(key, 0, -1)
        elif kind == b"hash":
            parts += [k + b"=" + v for k, v in r.hgetall(key).items()]
        elif kind == b"set":
            parts += list(r.smembers(key))
        elif kind == b"zset":
            parts += r.zrange(key, 0, -1)
    return b"\n".join(parts).decode("utf-8", "replace")


def test_a_url_encoded_password_in_a_tools_stderr_is_masked_everywhere_the_error_is_stored(
        tmp_path, make_config, runtime_for, redis_url, start_worker, pg_names, monkeypatch):
    database, role = pg_names("bt_redact"), pg_names("bt_redact_role")
    with pg() as cur:
        cur.execute(f"CREATE ROLE {role} LOGIN PASSWORD %s", (PASSWORD,))
        cur.execute(f'CREATE DATABASE "{database}" OWNER {role}')
    monkeypatch.setenv("SHOP_DB_PASSWORD", PASSWORD)  # the operator's shell: the CLI checks the reference resolves
    try:
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        (bin_dir / "pg_dump").write_text(FAILING_PG_DUMP)
        cfg, worker, rt, run, info = _run_with_failing_pg_dump(bin_dir, role, database, make_config, runtime_for, redis_url,
                                                               start_worker)
        assert info["status"] == Status.FAILED
        # The error still says what happened: the tool's words, with the password masked.
        assert "remaining connection slots are reserved" in info["error"] and "***" in info["error"]
        assert "keyword form was" in info["error"]  # the line with the password outside a URL is there, masked

        shown = run_cli("show", run.id, "--json", config=cfg, env={"BACKUP_BROKER_URL": redis_url}, check=0).stdout
        audit_log = run_cli("audit", "--json", config=cfg, env={"BACKUP_BROKER_URL": redis_url}, check=0).stdout
        catalog = "\n".join(sqlite3.connect(rt.settings.catalog_url.removeprefix("sqlite:///")).iterdump())
        events = "\n".join(str(row) for row in sqlite3.connect(rt.settings.catalog_url.removeprefix("sqlite:///"))
                           .execute("SELECT kind, message, detail FROM events"))
        assert "chain.failed" in events and "remaining connection slots" in events
        assert "remaining connection slots" in audit_log
        r = redis.Redis.from_url(redis_url)
        stored = redis_text(r)
        assert "remaining connection slots" in stored  # the failure did reach the result backend
        log = worker.log.read_text()
        assert "remaining connection slots" in log
        for form in encoded_forms(PASSWORD):
            for place, text in {"run error": info["error"], "show": shown, "audit": audit_log, "catalog": catalog,
                                "events": events, "worker log": log, "redis": stored}.items():
                assert form not in text, f"{form!r} found in the {place}"
    finally:
        with pg() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
            cur.execute(f"DROP ROLE IF EXISTS {role}")


def test_redact_masks_a_remembered_secret_in_every_encoding_a_tool_or_a_serializer_writes():
    from backup_tasks import redaction

    secret = "Zq9 p@ss!w0rd%\"é"  # a space, URL-special characters, a quote and a non-ASCII letter
    redaction.remember(secret)
    forms = encoded_forms(secret) | {secret.replace('"', '\\"'), quote(secret, safe="@!")}
    for form in forms:
        masked = redaction.redact(f"pg_dump: error: password {form} rejected")
        assert masked == "pg_dump: error: password *** rejected", (form, masked)
    # A URL password is masked whatever it is, remembered or not; a URL without one is left alone.
    assert redaction.redact("postgresql://app:n0t-remembered@db01:5432/shop") == "postgresql://app:***@db01:5432/shop"
    assert redaction.redact("redis://db01:6379/0 and postgresql://app@db01/shop") == "redis://db01:6379/0 and postgresql://app@db01/shop"
    assert redaction.redact(None) is None


def test_an_exception_that_is_not_ours_reaches_the_result_backend_redacted(
        tmp_path, make_config, runtime_for, redis_url, start_worker, pg_names, monkeypatch):
    """A library's own exception (here the ValueError of a version check quoting the tool's output) is no
    BackupError, so nothing masked it when it was made: the task boundary stores it redacted, type name kept."""
    database, role = pg_names("bt_redact"), pg_names("bt_redact_role")
    with pg() as cur:
        cur.execute(f"CREATE ROLE {role} LOGIN PASSWORD %s", (PASSWORD,))
        cur.execute(f'CREATE DATABASE "{database}" OWNER {role}')
    monkeypatch.setenv("SHOP_DB_PASSWORD", PASSWORD)
    try:
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        # A pg_dump wrapper whose --version output echoes the DSN it was set up with, no version number in it.
        (bin_dir / "pg_dump").write_text(
            "#!/bin/sh\n"
            f"echo 'wrapper for postgresql://{role}:{quote(PASSWORD, safe='')}@127.0.0.1:5432/{database}'\n"
            f"echo 'wrapper password={quote(PASSWORD, safe='!')} or {PASSWORD}'\n"
            "echo 'pg_dump (PostgreSQL) version unknown'\n")
        cfg, worker, rt, run, info = _run_with_failing_pg_dump(bin_dir, role, database, make_config, runtime_for, redis_url,
                                                               start_worker)
        assert info["status"] == Status.FAILED
        # What failed is still said: the exception's type and its words, the secret masked.
        assert "ValueError: no PostgreSQL version in" in info["error"] and "***" in info["error"]
        stored = redis_text(redis.Redis.from_url(redis_url))
        assert "ValueError: no PostgreSQL version in" in stored  # the failure did reach the result backend
        log = worker.log.read_text()
        assert "Traceback" in log and "no PostgreSQL version in" in log  # a bug is logged with its traceback
        # Embedded (no broker), the same stages run and log in the CLI's own process.
        embedded = run_cli("backup", "shop-db", config=cfg, env={"BACKUP_BROKER_URL": None})
        assert embedded.returncode == 1 and "ValueError" in embedded.stdout + embedded.stderr
        for form in encoded_forms(PASSWORD):
            for place, text in {"run error": info["error"], "worker log": log, "redis": stored,
                                "embedded output": embedded.stdout + embedded.stderr}.items():
                assert form not in text, f"{form!r} found in the {place}"
    finally:
        with pg() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
            cur.execute(f"DROP ROLE IF EXISTS {role}")


def _run_with_failing_pg_dump(bin_dir, role, database, make_config, runtime_for, redis_url, start_worker):
    """A backup of the shop database on a real worker, whose pg_dump is the wrapper in ``bin_dir``; its final info."""
    (bin_dir / "pg_dump").chmod(stat.S_IRWXU)
    cfg = make_config(
        f'[targets.shop-db]\nkind = "postgres"\nhost = "hostR"\n'
        f'dsn = "postgresql://{role}@127.0.0.1:5432/{database}"\npassword = "env:SHOP_DB_PASSWORD"\n'
        f'options = {{ bin_dir = "{bin_dir}" }}\n')
    worker = start_worker(cfg, redis_url, ["host.hostR", "verify"], name="w1@hostR",
                          extra_env={"SHOP_DB_PASSWORD": PASSWORD})
    rt = runtime_for(cfg, BACKUP_BROKER_URL=redis_url)
    run = client.enqueue_backup("shop-db", rt=rt)
    try:
        info = run.wait(timeout=120)
    except client.BackupFailed:
        info = run.info()
    return cfg, worker, rt, run, info
