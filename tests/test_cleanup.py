"""Cleanup runbook: 60 simulated days of nightly backups on a real local tier and a real
S3 tier, a cleanup every morning; the CLI's plan with reasons; Object Lock; debris.

Simulated days: one real backup goes through the chain, then each night's backup is a
copy of its artifact under a new id and time, with a manifest signed by the real key
and recorded through the catalog's own methods, so storage, manifests and catalog agree
exactly as after a real run (only the clock differs, which the plan takes as input).
"""

from __future__ import annotations

import io
import json
import os
from datetime import datetime, timedelta, timezone

import pytest

from backup_tasks import client, timefmt
from backup_tasks.records import manifest
from backup_tasks.policy import retention
from backup_tasks.records.catalog import Location, Status
from backup_tasks.ops.cleanup import run_cleanup
from backup_tasks.errors import ObjectLocked, ObjectNotFound
from conftest import run_cli
from s3server import s3_tier_toml

T0 = datetime(2024, 3, 1, 2, 0, tzinfo=timezone.utc)
POLICY = "{ keep_last = 2, keep_daily = 7, keep_weekly = 4, keep_monthly = 3 }"


def files_target(tmp_path, storage, retention=POLICY):
    tree = tmp_path / "tree"
    tree.mkdir(exist_ok=True)
    (tree / "f.txt").write_text("nightly data\n" * 100)
    return f'[targets.t]\nkind = "files"\npaths = ["{tree}"]\nstorage = {json.dumps(storage)}\nretention = {retention}\n'


def simulate_night(rt, seed: dict, when: datetime, *, verified: bool = True) -> str:
    """Store a copy of the seed backup as if it had run at ``when``; return its id."""
    backup_id = f"t-{when:%Y%m%dT%H%M%SZ}-sim{when:%j}"
    target = seed["doc"]["target"]
    key = f"{manifest.prefix(target, backup_id)}/{seed['doc']['stored']['name']}"
    tiers = [loc["tier"] for loc in seed["doc"]["locations"]]
    for tier in tiers:
        rt.storage(tier).put(key, io.BytesIO(seed["artifact"]))
    # Without the seed's tree listing (see seed_backup): a copy is a full as backups were before
    # listings, which verify and restore still accept.
    doc = manifest.sign({**{k: v for k, v in seed["doc"].items() if k not in ("signature", "listing")}, "backup_id": backup_id,
                         "created_at": timefmt.iso(when), "finished_at": timefmt.iso(when + timedelta(minutes=2)),
                         "locations": [{"tier": t, "key": key} for t in tiers]}, rt.signer)
    for tier in tiers:
        rt.storage(tier).put(manifest.manifest_key(target, backup_id), io.BytesIO(manifest.dumps(doc)))
    rt.catalog.record_upload(backup_id, doc, [Location(t, key, len(seed["artifact"])) for t in tiers],
                             summary=manifest.summary(doc), next_stage="verify")
    if verified:
        at = when + timedelta(minutes=5)
        marker = manifest.sign({"format": manifest.FORMAT, "backup_id": backup_id, "verified_at": timefmt.iso(at),
                                "checks": {"simulated": True}}, rt.signer)
        for tier in tiers:
            rt.storage(tier).put(manifest.verified_key(target, backup_id), io.BytesIO(manifest.dumps(marker)))
        rt.catalog.record_verification(backup_id, ok=True, check=None, detail={"simulated": True}, duration=1.0, at=at)
    return backup_id


def seed_backup(rt) -> dict:
    info = client.enqueue_backup("t", rt=rt).wait()
    assert info["status"] == "verified"
    storage = rt.storage(info["locations"][0]["tier"])
    with storage.get(manifest.manifest_key("t", info["id"])) as fh:
        doc = json.loads(fh.read())
    with storage.get(info["locations"][0]["key"]) as fh:
        artifact = fh.read()
    # Copies go without the listing (its entries name the seed as their holder), so they carry the
    # archive's file list in the manifest instead, as backups did before listings were objects.
    from backup_tasks.ops import listing_store, readback
    from backup_tasks.sources.files.listing import archive_entries

    found = readback.locate(rt, rt.catalog.get(info["id"]))
    with listing_store.archive_listing(rt, found) as listing:
        doc["source"]["files"] = list(archive_entries(doc, listing))
    # the real run is the seed, not part of the simulated history
    from backup_tasks.ops.cleanup import remove_copy

    for loc in info["locations"]:
        remove_copy(rt, "t", info["id"], loc["tier"], loc["key"])
    rt.catalog.drop_locations(info["id"], [loc["tier"] for loc in info["locations"]])
    return {"doc": doc, "artifact": artifact}


def stored_ids(rt, tier) -> set[str]:
    return {i.key.split("/")[1] for i in rt.storage(tier).list("t/") if i.key.endswith("/manifest.json")}


def test_sixty_days_of_nightly_backups_and_morning_cleanups(tmp_path, make_config, runtime_for, s3_server, s3_bucket, s3_env):
    cfg = make_config(files_target(tmp_path, ["local", "offsite"]),
                      tiers=f'[tiers.local]\nkind = "local"\npath = "{tmp_path / "store"}"\nmax_age_days = 30\n'
                            + s3_tier_toml(s3_server, s3_bucket, max_age_days=90))
    rt = runtime_for(cfg)
    seed = seed_backup(rt)
    history: list[retention.Backup] = []
    for day in range(60):
        night = T0 + timedelta(days=day)
        verified = day % 9 != 8  # now and then a backup stays unverified
        bid = simulate_night(rt, seed, night, verified=verified)
        history.append(retention.Backup(bid, "t", night, "verified" if verified else "uploaded",
                                        (retention.Copy("local"), retention.Copy("offsite"))))
        if day == 20:  # an upload that died before its manifest, and a staging leftover
            rt.storage("local").put("t/t-dead-run/data.tar.zst.age", io.BytesIO(b"half an artifact"))
            (tmp_path / "state" / "staging" / "t-dead-run").mkdir(parents=True, exist_ok=True)
            for path in (tmp_path / "store" / "t" / "t-dead-run" / "data.tar.zst.age", tmp_path / "state" / "staging" / "t-dead-run"):
                os.utime(path, (night.timestamp(), night.timestamp()))  # written that simulated night
        morning = night + timedelta(hours=5) + (timedelta(days=1) if day == 21 else timedelta())
        report = run_cleanup(rt, now=morning)
        assert report["errors"] == [] and report["refused"] == []

        # the invariants that matter on every single morning
        newest_verified = max((b for b in history if b.status == "verified"), key=lambda b: b.created_at)
        for tier in ("local", "offsite"):
            on_tier = stored_ids(rt, tier)
            assert newest_verified.id in on_tier
            catalog_side = {r.id for r in rt.catalog.list(target="t") if any(l.tier == tier for l in r.locations)}
            assert on_tier == catalog_side  # storage and catalog agree after every cleanup
        oldest_local = min(datetime.strptime(i.split("-")[1], "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)
                           for i in stored_ids(rt, "local"))
        assert oldest_local >= morning - timedelta(days=30) or oldest_local == newest_verified.created_at
        if day == 21:
            assert any(d["kind"] == "artifact-without-manifest" for d in report["debris"])
            assert any(d["kind"] == "staging" for d in report["debris"])
            assert not (tmp_path / "state" / "staging" / "t-dead-run").exists()
            with pytest.raises(ObjectNotFound):
                rt.storage("local").stat("t/t-dead-run/data.tar.zst.age")

    # Daily cleanups end where one plan over the whole history ends.
    final = retention.plan_retention(history, {"t": retention.Policy(keep_last=2, keep_daily=7, keep_weekly=4, keep_monthly=3)},
                                     {"local": 30, "offsite": 90}, morning)
    for tier in ("local", "offsite"):
        assert stored_ids(rt, tier) == {d.backup_id for d in final.keeps if d.tier == tier}
    assert len(stored_ids(rt, "offsite")) <= 2 + 7 + 4 + 3
    rows = {r.id: r for r in rt.catalog.list(target="t")}
    gone = [r for r in rows.values() if r.status == Status.DELETED]
    assert len(gone) == 60 + 1 - len(stored_ids(rt, "offsite") | stored_ids(rt, "local"))
    assert all(r.locations == [] for r in gone)
    # a kept backup still restores from what is left
    from backup_tasks.ops.verify import verify_backup

    assert verify_backup(rt, newest_verified.id)["status"] == "verified"


def test_cleanup_cli_prints_the_plan_with_reasons_and_dry_run_deletes_nothing(tmp_path, make_config, runtime_for):
    cfg = make_config(files_target(tmp_path, ["local"], retention="{ keep_last = 1 }"))
    rt = runtime_for(cfg)
    seed = seed_backup(rt)
    ids = [simulate_night(rt, seed, T0 + timedelta(days=d)) for d in range(3)]
    plan = json.loads(run_cli("cleanup", "--dry-run", "--json", "--now", "2024-03-04T00:00:00Z", config=cfg, check=0).stdout)
    decisions = {d["backup_id"]: d for d in plan["decisions"]}
    assert decisions[ids[2]]["action"] == "keep" and "newest verified backup" in decisions[ids[2]]["reasons"]
    assert decisions[ids[0]]["action"] == "remove"
    assert decisions[ids[0]]["reasons"] == ["not selected by the target's policy (keep_last 1)"]
    assert plan["dry_run"] is True and plan["removed"] == [] and sorted(plan["would_delete_backups"]) == ids[:2]
    assert stored_ids(rt, "local") == set(ids)
    human = run_cli("cleanup", "--dry-run", "--target", "t", "--now", "2024-03-04T00:00:00Z", config=cfg, check=0).stdout
    assert "not selected by the target's policy" in human and "newest verified backup" in human
    done = json.loads(run_cli("cleanup", "--json", "--now", "2024-03-04T00:00:00Z", config=cfg, check=0).stdout)
    assert sorted(done["deleted_backups"]) == ids[:2] and stored_ids(rt, "local") == {ids[2]}
    again = json.loads(run_cli("cleanup", "--json", "--now", "2024-03-04T00:00:00Z", config=cfg, check=0).stdout)
    assert again["removed"] == []  # idempotent
    listed = json.loads(run_cli("list", "--json", "--status", "deleted", config=cfg, check=0).stdout)
    assert {r["id"] for r in listed} >= set(ids[:2])
    bad = run_cli("cleanup", "--target", "nope", "--json", config=cfg)
    assert bad.returncode == 2 and json.loads(bad.stdout)["error"]["type"]
    bad_now = run_cli("cleanup", "--now", "yesterday", "--json", config=cfg)
    assert bad_now.returncode == 2


def test_object_locked_copies_are_planned_around_and_deletes_refused(tmp_path, make_config, runtime_for, s3_server, s3_env):
    bucket = s3_server.make_bucket(object_lock=True)
    cfg = make_config(files_target(tmp_path, ["local", "offsite"], retention="{ keep_last = 1 }"),
                      tiers=f'[tiers.local]\nkind = "local"\npath = "{tmp_path / "store"}"\n'
                            + s3_tier_toml(s3_server, bucket, max_age_days=2, object_lock="compliance"))
    rt = runtime_for(cfg)
    ids = [client.enqueue_backup("t", rt=rt).wait()["id"] for _ in range(3)]
    report = run_cleanup(rt)
    by = {(d["backup_id"], d["tier"]): d for d in report["decisions"]}
    for old in ids[:2]:
        assert by[old, "local"]["action"] == "remove"
        assert by[old, "offsite"]["action"] == "keep"
        assert by[old, "offsite"]["reasons"][0].startswith("object-locked on tier 'offsite' until ")
        assert "would be removed: not selected" in by[old, "offsite"]["reasons"][0]
    assert stored_ids(rt, "offsite") == set(ids) and stored_ids(rt, "local") == {ids[2]}
    assert {r.id for r in rt.catalog.list(status="deleted")} == set()  # still held offsite
    key = rt.catalog.get(ids[0]).locations[0].key
    with pytest.raises(ObjectLocked):
        rt.storage("offsite").delete(key)
    # Pretend the lock had expired: the plan removes the copies, the server still refuses, and says so.
    later = run_cleanup(rt, now=datetime.now(timezone.utc) + timedelta(days=3))
    assert {r["backup_id"] for r in later["refused"]} == set(ids[:2]) and later["errors"] == []
    assert stored_ids(rt, "offsite") == set(ids)
    assert all(rt.catalog.get(i).status != "deleted" for i in ids)
