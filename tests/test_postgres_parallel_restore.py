"""Runbook: a parallel restore (--jobs 2) loads the data while the stream still arrives, and stays all-or-nothing.

The data section loads from the pipe while the plaintext is teed into a private file;
indexes, constraints and triggers are built from that file with two jobs only after the
stream's hashes matched the signed manifest. Real PostgreSQL 15, real pg_dump and pg_restore.
"""

from __future__ import annotations

import os
import stat
import subprocess

import pyrage
import pytest
from pyrage import x25519

from backup_tasks import client
from backup_tasks.errors import SourceError, VerificationFailed
from backup_tasks.ops import restore
from backup_tasks.records import keys
from backup_tasks.sources.db.dsn import Server
from backup_tasks.sources.postgres import overlapped, restore as pg_restore
from databases import make_pg_database, pg, pg_checksums, pg_databases, pg_names, pg_objects, unique  # noqa: F401  (fixtures)


def _constraints(database: str) -> list[tuple[str, str]]:
    with pg(database) as cur:
        cur.execute("SELECT conname, contype FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace "
                    "WHERE n.nspname IN ('public', 'reporting') ORDER BY 1")
        return cur.fetchall()


@pytest.fixture
def backed_up(make_config, runtime_for, pg_names):
    source = pg_names("bt_pgjsrc")
    make_pg_database(source)
    cfg = make_config(f'[targets.par-db]\nkind = "postgres"\nhost = "db01"\n'
                      f'dsn = "postgresql://postgres@127.0.0.1:5432/{source}"\n')
    rt = runtime_for(cfg)
    info = client.enqueue_backup("par-db", rt=rt).wait()
    return rt, info, source


def test_parallel_restore_brings_back_every_row_index_constraint_and_trigger(backed_up, pg_names):
    rt, info, source = backed_up
    dest = pg_names("bt_pgjdst")
    result = restore.restore_to_database(rt, info["id"], dest, jobs=2)
    assert result["jobs"] == 2 and result["overlapped"] is True and result["streamed"] is False
    assert pg_checksums(dest) == pg_checksums(source)
    assert pg_objects(dest) == pg_objects(source)  # indexes, trigger, sequence position, view, functions
    assert _constraints(dest) == _constraints(source)
    assert ("orders_customer_id_fkey", "f") in _constraints(dest) and ("customers_email_key", "u") in _constraints(dest)
    assert [d for d in pg_databases(dest) if d != dest] == []  # no staging database left


def test_the_data_is_loaded_before_the_hash_check_and_the_indexes_after_it(tmp_path, pg_names):
    """The overlap itself: when the stream has ended the rows are in, indexes and the foreign key are not yet."""
    source, dest = pg_names("bt_pgjsrc"), pg_names("bt_pgjdst")
    make_pg_database(source)
    archive = tmp_path / "plain.pgdump"
    with open(archive, "wb") as out:  # through a pipe, like our dump stage: a custom archive without data offsets
        dump = subprocess.Popen(["pg_dump", "-Fc", "-h", "127.0.0.1", "-U", "postgres", source], stdout=subprocess.PIPE)
        subprocess.run(["cat"], stdin=dump.stdout, stdout=out, check=True)
        assert dump.wait() == 0
    with pg() as cur:
        cur.execute(f'CREATE DATABASE "{dest}"')
    workdir = tmp_path / "work"
    workdir.mkdir()
    seen = {}

    def before_load() -> None:
        copy = workdir / overlapped.ARCHIVE_NAME
        seen["mode"] = stat.S_IMODE(os.stat(copy).st_mode)
        seen["size"] = copy.stat().st_size
        seen["on_disk"] = copy.stat().st_blocks * 512
        with pg(dest) as cur:
            cur.execute("SELECT count(*) FROM orders")
            seen["orders"] = cur.fetchone()[0]
            cur.execute("SELECT count(*) FROM pg_indexes WHERE tablename = 'orders'")
            seen["order_indexes"] = cur.fetchone()[0]

    with open(archive, "rb") as plaintext:
        result = pg_restore.load(plaintext, {}, Server(engine="postgres", host="127.0.0.1", port=5432, user="postgres", database=dest),
                                 jobs=2, workdir=workdir, before_load=before_load)
    assert result["overlapped"] is True
    # the file is as long as the archive, but only its header and TOC were written: the data is a hole
    assert result["staged_bytes"] < archive.stat().st_size // 4 and seen.pop("on_disk") <= result["staged_bytes"] + 8192
    assert seen == {"mode": 0o600, "size": archive.stat().st_size, "orders": 2002, "order_indexes": 0}
    assert list(workdir.iterdir()) == []  # the private copy is gone
    assert pg_objects(dest) == pg_objects(source) and pg_checksums(dest) == pg_checksums(source)


def _reencrypted(data: bytes, keys_dir) -> bytes:
    """The same plaintext encrypted again to the same recipient: a genuine age file of the same size, other bytes.

    rage adds a random-length grease stanza to the header, so encrypt until the size matches
    (about one try in 150; 5000 tries miss with a probability near e**-34).
    """
    identities = list(keys.load_identities(keys_dir / keys.IDENTITY_FILE).values())
    recipient = x25519.Recipient.from_str((keys_dir / keys.RECIPIENT_FILE).read_text().strip())
    plain = pyrage.decrypt(data, identities)
    for _ in range(5000):
        again = pyrage.encrypt(plain, [recipient])
        if len(again) == len(data):
            return again
    raise AssertionError("no same-size re-encryption in 5000 tries")


@pytest.mark.parametrize("damage", ["replaced", "flipped", "truncated"])
def test_an_altered_artifact_fails_the_parallel_restore_and_leaves_no_database(backed_up, pg_names, session_keys, damage):
    rt, info, _ = backed_up
    loc = info["locations"][0]
    path = rt.storage(loc["tier"]).inner.root / loc["key"]
    data = path.read_bytes()
    if damage == "replaced":  # decrypts, decompresses and loads in full: only the stored sha256 tells
        altered = _reencrypted(data, session_keys)
        assert len(altered) == len(data) and altered != data
    elif damage == "flipped":
        altered = bytearray(data)
        altered[len(data) // 2] ^= 0x01
    else:
        altered = data[: len(data) // 2]
    path.write_bytes(bytes(altered))
    dest = pg_names("bt_pgjbad")
    with pytest.raises(VerificationFailed) as failed:
        restore.restore_to_database(rt, info["id"], dest, jobs=2)
    assert info["id"] in str(failed.value)
    expected = {"replaced": ("stored-sha256", "sha256"), "flipped": ("decrypt", "age decryption failed"),
                "truncated": ("stored-size", "bytes, the manifest says")}[damage]
    assert failed.value.check == expected[0] and expected[1] in str(failed.value)
    assert pg_databases(dest) == []  # neither the requested name nor a staging database
    assert list(rt.staging_root().glob(f"restore-{info['id']}-*")) == []  # nor the private plaintext copy


class _Endless:
    """The archive, then zeros without end: a load that does not stop at pg_restore's failure never returns."""

    def __init__(self, path) -> None:
        self._fh, self.served = open(path, "rb"), 0

    def read(self, size: int = -1) -> bytes:
        data = self._fh.read(size) or bytes(size if size > 0 else 1 << 16)
        self.served += len(data)
        return data


def test_a_failing_streaming_pg_restore_stops_the_stream_and_names_its_error(tmp_path, pg_names):
    source, dest = pg_names("bt_pgjsrc"), pg_names("bt_pgjdst")
    make_pg_database(source)
    archive = tmp_path / "plain.pgdump"
    subprocess.run(["pg_dump", "-Fc", "-h", "127.0.0.1", "-U", "postgres", "-f", str(archive), source], check=True)
    with pg() as cur:
        cur.execute(f'CREATE DATABASE "{dest}"')
    with pg(dest) as cur:
        cur.execute("CREATE TABLE orders (x int)")  # pg_restore's CREATE TABLE orders fails (--exit-on-error)
    workdir = tmp_path / "work"
    workdir.mkdir()
    stream = _Endless(archive)
    called = []
    with pytest.raises(SourceError) as failed:
        pg_restore.load(stream, {}, Server(engine="postgres", host="127.0.0.1", port=5432, user="postgres", database=dest),
                        jobs=2, workdir=workdir, before_load=lambda: called.append(True))
    assert 'relation "orders" already exists' in str(failed.value) and dest in str(failed.value)
    assert called == [] and list(workdir.iterdir()) == []
    assert stream.served < archive.stat().st_size + (4 << 20)  # stopped within a few chunks of the failure


def test_a_parallel_restore_of_one_table(backed_up, pg_names):
    rt, info, source = backed_up
    dest = pg_names("bt_pgjone")
    result = restore.restore_to_database(rt, info["id"], dest, jobs=2, tables=("reporting.Mixed Case",))
    assert result["tables_selected"] == ["reporting.Mixed Case"] and result["overlapped"] is True
    assert pg_checksums(dest) == {"reporting.Mixed Case": pg_checksums(source)["reporting.Mixed Case"]}


def test_a_parallel_restore_keeps_owners_and_grants_when_asked(tmp_path, pg_names):
    role, source, made = unique("bt_pgjrole"), pg_names("bt_pgjsrc"), []
    with pg() as cur:
        cur.execute(f'CREATE ROLE "{role}"')
    try:
        make_pg_database(source, 'CREATE TABLE owned (id int PRIMARY KEY); INSERT INTO owned VALUES (1), (2);'
                                 f'ALTER TABLE owned OWNER TO "{role}"; GRANT SELECT ON owned TO PUBLIC;')
        archive = tmp_path / "plain.pgdump"
        subprocess.run(["pg_dump", "-Fc", "-h", "127.0.0.1", "-U", "postgres", "-f", str(archive), source], check=True)
        for keep in (True, False):
            dest = pg_names("bt_pgjown")
            made.append(dest)
            with pg() as cur:
                cur.execute(f'CREATE DATABASE "{dest}"')
            workdir = tmp_path / f"work-{keep}"
            workdir.mkdir()
            with open(archive, "rb") as plaintext:
                result = pg_restore.load(plaintext, {}, Server(engine="postgres", host="127.0.0.1", port=5432,
                                                               user="postgres", database=dest),
                                         jobs=2, workdir=workdir, keep_owners=keep)
            assert result["owners_and_grants"] is keep
            with pg(dest) as cur:
                cur.execute("SELECT tableowner FROM pg_tables WHERE tablename = 'owned'")
                owner = cur.fetchone()[0]
                cur.execute("SELECT relacl IS NOT NULL FROM pg_class WHERE relname = 'owned'")
                granted = cur.fetchone()[0]
                cur.execute("SELECT count(*) FROM owned")
                assert cur.fetchone()[0] == 2
            assert (owner == role, granted) == (keep, keep)
    finally:
        with pg() as cur:  # the role can go only once no database holds objects it owns
            for name in [source, *made]:
                cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            cur.execute(f'DROP ROLE IF EXISTS "{role}"')
