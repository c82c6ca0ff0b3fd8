"""The retention plan is a pure function: tested with plain data, examples and hypothesis."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backup_tasks.policy.retention import KEEP, REMOVE, Backup, Copy, PERIOD_RULES, Policy, parse_duration, plan_retention

NOW = datetime(2024, 6, 30, 12, 0, tzinfo=timezone.utc)
AGES = {"local": 30, "offsite": 90}


def daily(n, *, target="db", status="verified", tiers=("local",), start=NOW, **kw):
    return [Backup(id=f"{target}-{i:03d}", target=target, created_at=start - timedelta(days=i), status=status,
                   copies=tuple(Copy(t) for t in tiers), **kw) for i in range(n)]


def actions(plan, tier="local"):
    return {d.backup_id: d.action for d in plan.decisions if d.tier == tier}


def test_keep_last_and_daily_with_reasons():
    backups = daily(10)
    plan = plan_retention(backups, {"db": Policy(keep_last=2, keep_daily=4)}, AGES, NOW)
    kept = sorted(b for b, a in actions(plan).items() if a == KEEP)
    assert kept == ["db-000", "db-001", "db-002", "db-003"]
    by_id = {d.backup_id: d for d in plan.decisions}
    assert by_id["db-000"].reasons == ("newest verified backup", "keep_last 2 (#1)", "keep_daily 4 (2024-06-30)")
    assert by_id["db-001"].reasons == ("keep_last 2 (#2)", "keep_daily 4 (2024-06-29)")
    assert by_id["db-009"].reasons == ("not selected by the target's policy (keep_last 2, keep_daily 4)",)
    assert all(d.reasons for d in plan.decisions)


def test_tier_max_age_removes_old_copies_per_tier():
    backups = daily(50, tiers=("local", "offsite"))
    plan = plan_retention(backups, {"db": Policy(keep_daily=60)}, AGES, NOW)
    assert {b for b, a in actions(plan, "local").items() if a == REMOVE} == {f"db-{i:03d}" for i in range(31, 50)}
    assert all(a == KEEP for a in actions(plan, "offsite").values())
    d = next(d for d in plan.decisions if d.backup_id == "db-040" and d.tier == "local")
    assert d.reasons[0].startswith("older than tier 'local' max_age_days 30")
    assert plan.removed_entirely() == set()  # every backup still has its offsite copy


def test_newest_verified_and_drill_proven_survive_everything():
    backups = daily(5, status="uploaded") + [
        Backup("db-v", "db", NOW - timedelta(days=100), "verified", (Copy("local"),)),
        Backup("db-d", "db", NOW - timedelta(days=200), "verified", (Copy("local"),), drill_passed=True),
    ]
    plan = plan_retention(backups, {"db": Policy(keep_last=1)}, AGES, NOW)
    a = actions(plan)
    assert a["db-v"] == KEEP and a["db-d"] == KEEP and a["db-000"] == KEEP
    assert [b for b, x in a.items() if x == REMOVE] == ["db-001", "db-002", "db-003", "db-004"]
    d = next(d for d in plan.decisions if d.backup_id == "db-d")
    assert d.reasons == ("newest drill-proven backup", "kept although older than tier 'local' max_age_days 30")


def test_parents_of_kept_incrementals_are_kept():
    full = Backup("db-full", "db", NOW - timedelta(days=10), "verified", (Copy("local"),))
    inc1 = Backup("db-inc1", "db", NOW - timedelta(days=9), "verified", (Copy("local"),), type="incremental", parent_id="db-full")
    inc2 = Backup("db-inc2", "db", NOW - timedelta(days=1), "verified", (Copy("local"),), type="incremental", parent_id="db-inc1")
    plan = plan_retention([full, inc1, inc2], {"db": Policy(keep_last=1)}, AGES, NOW)
    assert actions(plan) == {"db-full": KEEP, "db-inc1": KEEP, "db-inc2": KEEP}
    assert next(d for d in plan.decisions if d.backup_id == "db-full").reasons == ("parent of kept incremental backup db-inc1",)


def test_object_locked_copies_are_kept_and_say_until_when():
    until = NOW + timedelta(days=3)
    backups = daily(4, tiers=()) and [
        Backup(f"db-{i}", "db", NOW - timedelta(days=i), "verified", (Copy("local"), Copy("offsite", locked_until=until)))
        for i in range(4)
    ]
    plan = plan_retention(backups, {"db": Policy(keep_last=1)}, AGES, NOW)
    assert actions(plan, "local") == {"db-0": KEEP, "db-1": REMOVE, "db-2": REMOVE, "db-3": REMOVE}
    assert set(actions(plan, "offsite").values()) == {KEEP}
    d = next(d for d in plan.decisions if d.backup_id == "db-2" and d.tier == "offsite")
    assert d.reasons[0].startswith("object-locked on tier 'offsite' until 2024-07-03T12:00:00.000Z (would be removed: not selected")
    # once the lock expired the copy may go
    later = plan_retention(backups, {"db": Policy(keep_last=1)}, AGES, until + timedelta(seconds=1))
    assert actions(later, "offsite")["db-2"] == REMOVE


def test_failed_running_and_policy_free_targets():
    backups = [
        Backup("db-run", "db", NOW, "running", (Copy("local"),)),
        Backup("db-fail-new", "db", NOW - timedelta(hours=1), "failed", (Copy("local"),)),
        Backup("db-ok", "db", NOW - timedelta(days=1), "verified", (Copy("local"),)),
        Backup("db-fail-old", "db", NOW - timedelta(days=2), "failed", (Copy("local"),)),
        Backup("db-gone", "db", NOW - timedelta(days=3), "deleted", ()),
    ]
    plan = plan_retention(backups, {}, AGES, NOW)
    assert actions(plan) == {"db-run": KEEP, "db-fail-new": KEEP, "db-ok": KEEP, "db-fail-old": REMOVE}
    assert plan.policies == {"db": "no rules"}


def test_keep_within_and_durations():
    assert parse_duration("7d") == timedelta(days=7) and parse_duration("1d12h") == timedelta(hours=36)
    assert parse_duration(2) == timedelta(days=2) and parse_duration("2w") == timedelta(weeks=2)
    for bad in ("soon", "7x", "", -1, True):
        with pytest.raises(ValueError):
            parse_duration(bad)
    plan = plan_retention(daily(10), {"db": Policy.from_config({"keep_within": "3d"})}, AGES, NOW)
    assert sorted(b for b, a in actions(plan).items() if a == KEEP) == ["db-000", "db-001", "db-002", "db-003"]


# -- properties over random histories ---------------------------------------------------

TIERS = ("local", "offsite")


@st.composite
def histories(draw):
    n = draw(st.integers(0, 24))
    backups: list[Backup] = []
    for i in range(n):
        created = NOW - timedelta(minutes=draw(st.integers(0, 400 * 24 * 60)))
        status = draw(st.sampled_from(["verified", "verified", "uploaded", "failed", "running", "deleted"]))
        tiers = draw(st.lists(st.sampled_from(TIERS), min_size=1, max_size=2, unique=True))
        copies = tuple(Copy(t, locked_until=NOW + timedelta(days=1) if draw(st.integers(0, 9)) == 0 else None) for t in tiers)
        target = draw(st.sampled_from(["db", "app"]))
        parent = None
        if backups and draw(st.booleans()):
            older = [b for b in backups if b.created_at <= created and b.target == target]
            if older:
                parent = draw(st.sampled_from(older)).id
        backups.append(Backup(f"b{i:02d}", target, created, status, copies,
                              type="incremental" if parent else "full", parent_id=parent,
                              drill_passed=draw(st.integers(0, 4)) == 0))
    return backups


policies = st.builds(Policy, keep_last=st.integers(0, 5), keep_daily=st.integers(0, 10), keep_weekly=st.integers(0, 6),
                     keep_monthly=st.integers(0, 6), keep_yearly=st.integers(0, 3),
                     keep_within=st.one_of(st.none(), st.integers(1, 30).map(lambda d: timedelta(days=d))))
max_ages = st.fixed_dictionaries({"local": st.integers(1, 60), "offsite": st.integers(1, 120)})


def newest(backups, target, pred):
    cands = [b for b in backups if b.target == target and b.status != "deleted" and b.copies and pred(b)]
    return max(cands, key=lambda b: (b.created_at, b.id), default=None)


@settings(max_examples=120, deadline=None)
@given(histories(), policies, max_ages)
def test_property_newest_verified_and_drill_proven_are_never_removed(backups, policy, ages):
    plan = plan_retention(backups, {"db": policy, "app": policy}, ages, NOW)
    for target in ("db", "app"):
        for protected in (newest(backups, target, lambda b: b.status == "verified"),
                          newest(backups, target, lambda b: b.drill_passed and b.status != "failed")):
            if protected:
                assert all(d.action == KEEP for d in plan.decisions if d.backup_id == protected.id)


@settings(max_examples=120, deadline=None)
@given(histories(), policies, max_ages)
def test_property_kept_incrementals_keep_their_parents(backups, policy, ages):
    plan = plan_retention(backups, {"db": policy, "app": policy}, ages, NOW)
    action = {(d.backup_id, d.tier): d.action for d in plan.decisions}
    by_id = {b.id: b for b in backups}
    for (bid, tier), act in action.items():
        parent = by_id[bid].parent_id
        if act != KEEP or not parent:
            continue
        on_tiers = {t: a for (p, t), a in action.items() if p == parent}
        if not on_tiers:
            continue  # the parent was deleted before this history starts
        if tier in on_tiers:
            assert on_tiers[tier] == KEEP, (bid, parent, tier)
        else:
            assert KEEP in on_tiers.values(), (bid, parent)


@settings(max_examples=80, deadline=None)
@given(histories(), policies, max_ages, st.randoms(use_true_random=False))
def test_property_plan_is_deterministic_and_complete(backups, policy, ages, rnd):
    plan = plan_retention(backups, {"db": policy, "app": policy}, ages, NOW)
    shuffled = list(backups)
    rnd.shuffle(shuffled)
    assert plan_retention(shuffled, {"db": policy, "app": policy}, ages, NOW) == plan
    expected = Counter((b.id, c.tier) for b in backups if b.status != "deleted" for c in b.copies)
    assert Counter((d.backup_id, d.tier) for d in plan.decisions) == expected
    assert all(d.reasons and all(d.reasons) for d in plan.decisions)
    for d in plan.decisions:  # locks hold whatever else was decided
        b = next(x for x in backups if x.id == d.backup_id)
        if any(c.tier == d.tier and c.locked_until and c.locked_until > NOW for c in b.copies):
            assert d.action == KEEP


@settings(max_examples=120, deadline=None)
@given(histories(), policies)
def test_property_gfs_counts_hold(backups, policy):
    # with no max age and nothing protected by other rules, the GFS reasons alone select
    plan = plan_retention(backups, {"db": policy, "app": policy}, {}, NOW)
    for target in ("db", "app"):
        usable = sorted((b for b in backups if b.target == target and b.status in ("uploaded", "verified") and b.copies),
                        key=lambda b: (b.created_at, b.id), reverse=True)
        reasons = {d.backup_id: d.reasons for d in plan.decisions if d.target == target}
        if policy.empty:
            assert all(reasons[b.id] and reasons[b.id][0] != "" for b in usable)
            continue
        last = [b.id for b in usable if any(r.startswith("keep_last") for r in reasons[b.id])]
        assert last == [b.id for b in usable[: policy.keep_last]]
        for rule, bucket_of in PERIOD_RULES:
            limit = getattr(policy, rule)
            chosen = [b for b in usable if any(r.startswith(rule + " ") for r in reasons[b.id])]
            buckets = [bucket_of(b.created_at) for b in chosen]
            assert len(chosen) == min(limit, len({bucket_of(b.created_at) for b in usable}))
            assert len(set(buckets)) == len(buckets)  # one per period
            for b in chosen:  # and it is the newest of its period
                assert b == next(x for x in usable if bucket_of(x.created_at) == bucket_of(b.created_at))
        for b in usable:  # what a rule selected is kept unless a tier's max age says otherwise (none here)
            if any(r.startswith(tuple(rule for rule, _ in PERIOD_RULES) + ("keep_last", "keep_within")) for r in reasons[b.id]):
                assert all(d.action == KEEP for d in plan.decisions if d.backup_id == b.id)


def test_plan_over_10000_entries_is_fast():
    import time

    backups = [Backup(f"db-{i:05d}", f"t{i % 10}", NOW - timedelta(hours=i), "verified" if i % 3 else "uploaded",
                      (Copy("local"), Copy("offsite"))) for i in range(10_000)]
    started = time.perf_counter()
    plan = plan_retention(backups, {f"t{k}": Policy(keep_last=3, keep_daily=7, keep_weekly=4, keep_monthly=6) for k in range(10)},
                          AGES, NOW)
    assert time.perf_counter() - started < 1.0
    assert len(plan.decisions) == 20_000
