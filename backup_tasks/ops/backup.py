"""The backup chain's stages as plain functions: dump → compress → encrypt → upload.

Celery tasks (orchestration/tasks.py) are thin wrappers around these, so the embedded
default and a distributed worker run the very same code. A stage writes one file in the
run's staging directory and seals it with a ``<stage>.json`` reference (size, sha256);
the next stage reads it while it is written, and finishes only at that seal
(ops/staging.py says how, ops/following.py how the reader waits). ``forward``, given by
a distributed worker, sends the next stage as soon as this one's output has started, so
the stages overlap like a shell pipeline; without it (the embedded default) they run one
after another. A stage that finds its own seal returns it instead of redoing the work.

Staged files are not fsynced: the tier write and the manifest are the durable steps;
``staging.Producing`` tells why nothing damaged is recorded as good without the fsync.
"""

from __future__ import annotations

import json
import secrets
import shutil
import socket
import time
from datetime import datetime, timezone
from pathlib import Path

from backup_tasks import timefmt
from backup_tasks.defaults import STAGES
from backup_tasks.ops import chain, following, listing_store, size_check, staging
from backup_tasks.records import attachments, events, keys, manifest, markers
from backup_tasks.stages import counting as progress_mod
from backup_tasks.records.catalog import Location, Status
from backup_tasks.errors import InputError, PermanentError, StorageError, TransientError
from backup_tasks.ops.runtime import Runtime
from backup_tasks.sources.base import plaintext_suffix, source_for
from backup_tasks.stages import compress as compress_stage
from backup_tasks.stages import encrypt as encrypt_stage
from backup_tasks.stages.digest import HashingWriter
from backup_tasks.storage.capabilities import LinkIn

BACKUP_TYPES = ("full", "incremental", "differential")
#: the stage a committed upload hands its run to, in the chain's order (``defaults.STAGES``)
AFTER_UPLOAD = STAGES[STAGES.index("upload") + 1]


def new_backup_id(target: str, now: datetime | None = None) -> str:
    """Readable, sortable and unique: ``<target>-<UTC time>-<random>``."""
    now = now or datetime.now(timezone.utc)
    return f"{target}-{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def check_type(target, type_: str) -> None:
    if type_ not in BACKUP_TYPES:
        raise InputError(f"unknown backup type '{type_}'", f"use one of: {', '.join(BACKUP_TYPES)}")
    chain.check_chain_type(target, type_)


def record_run(rt: Runtime, backup_id: str, target_name: str, type_: str, actor: str = "") -> dict:
    """Put the run in the catalog (idempotent); the start reference carries its creation time."""
    target = rt.target(target_name)
    check_type(target, type_)
    created = rt.catalog.create_run(backup_id, target=target.name, kind=target.kind, type=type_, host=target.host, actor=actor)
    # The run's creation time travels with it, so the manifest and the catalog agree on it.
    return {"backup_id": backup_id, "target": target.name, "type": type_, "stage": "start", "created_at": timefmt.iso(created)}


def start(rt: Runtime, backup_id: str, target_name: str, type_: str, actor: str = "", rehash: bool = False) -> dict:
    """On the worker: record the run, and refuse it now if its manifest could not be signed later."""
    ref = record_run(rt, backup_id, target_name, type_, actor)
    rt.signer  # noqa: B018 - fail now, not after an hour of dumping
    return {**ref, "rehash": True} if rehash else ref


def dump(rt: Runtime, ref: dict, progress: progress_mod.Callback | None = None,
         forward: staging.Forward | None = None) -> dict:
    backup_id = ref["backup_id"]
    run_dir = rt.run_dir(backup_id)
    if done := staging.find_ref(run_dir, "dump"):
        return done
    target = rt.target(ref["target"])
    source = source_for(target.kind)
    rt.catalog.set_stage(backup_id, "dump")
    started = timefmt.now()
    workdir = run_dir / "work"
    shutil.rmtree(workdir, ignore_errors=True)  # a dead attempt's leftovers (a half-written globals.sql) go first
    workdir.mkdir(mode=0o700)
    final = run_dir / f"data.{plaintext_suffix(source, target)}"
    report: dict = {}
    kwargs: dict = {}
    plan = {"type": ref.get("type", "full"), "parent": None}
    if getattr(source, "chains", False):  # files and config: a tree listing, and incrementals
        spec, plan = chain.prepare_dump(rt, target, ref, workdir, run_dir / listing_store.LISTING_NAME)
        kwargs["chain"] = spec

    def produce(out: HashingWriter) -> None:
        report.update(source.dump(target, progress_mod.writing(out, progress, "dump"), workdir, **kwargs))

    head = {"backup_id": backup_id, "target": target.name, **plan,
            "created_at": ref.get("created_at") or timefmt.iso(started)}
    with staging.Producing(run_dir, "dump", final, head, forward) as out:
        try:
            out.write(produce)
            sealed = attachments.collect(workdir, rt.recipients if rt.settings.recipients else [], target=target.name)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)  # plaintext attachments never outlive the stage
        if sealed:
            (run_dir / "attachments.json").write_text(json.dumps(sealed))
        (run_dir / "source.json").write_text(json.dumps(report))
        return out.seal()


def compress(rt: Runtime, ref: dict, progress: progress_mod.Callback | None = None,
             forward: staging.Forward | None = None) -> dict:
    """Compress the dump as it is written (``following``), or pass it on untouched when compression is off."""
    run_dir = rt.run_dir(ref["backup_id"], create=False)
    if done := staging.find_ref(run_dir, "compress"):
        return done
    settings = rt.settings
    method = settings.compression
    if method == "none":
        return _pass_on(ref, forward, compression="none", level=None)
    rt.catalog.set_stage(ref["backup_id"], "compress")
    final = run_dir / (staging.name_of(ref) + compress_stage.SUFFIX[method])
    head = {**staging.carry(ref), "compression": method, "level": settings.compression_level}
    with following.follow(run_dir, ref, "compress") as src, \
            staging.Producing(run_dir, "compress", final, head, forward) as out:
        counted = progress_mod.reading(src, progress, "compress", src.expected_size)
        out.write(lambda w: compress_stage.compress(counted, w, method, level=settings.compression_level,
                                                    threads=settings.compression_threads))
        done = out.seal()
    staging.drop_input(following.merged(ref, src.seal), final)
    return done


def encrypt(rt: Runtime, ref: dict, progress: progress_mod.Callback | None = None,
            forward: staging.Forward | None = None) -> dict:
    """Encrypt the compressed file as it is written (``following``), or pass it on when the target may stay plain."""
    run_dir = rt.run_dir(ref["backup_id"], create=False)
    if done := staging.find_ref(run_dir, "encrypt"):
        return done
    target = rt.target(ref["target"])
    if not rt.settings.recipients:
        if not source_for(target.kind).allows_plaintext:
            raise PermanentError(
                f"target '{target.name}' (kind {target.kind}) must be encrypted but no recipients are configured",
                "set recipients in [settings]; backupctl keys generate makes a key pair",
            )
        return _pass_on(ref, forward, encrypted=False)
    rt.catalog.set_stage(ref["backup_id"], "encrypt")
    final = run_dir / (staging.name_of(ref) + encrypt_stage.SUFFIX)
    head = {**staging.carry(ref), "compression": ref["compression"], "level": ref.get("level"), "encrypted": True}
    with following.follow(run_dir, ref, "encrypt") as src, \
            staging.Producing(run_dir, "encrypt", final, head, forward) as out:
        counted = progress_mod.reading(src, progress, "encrypt", src.expected_size)
        out.write(lambda w: encrypt_stage.encrypt(counted, w, rt.recipients))
        done = out.seal()
    staging.drop_input(following.merged(ref, src.seal), final)
    return done


def _pass_on(ref: dict, forward: staging.Forward | None, **facts) -> dict:
    """A stage with nothing to do (no compression, no encryption) hands its input on, with what it decided."""
    passed = {**ref, **facts}
    if forward is not None:
        forward(passed)
    return passed


def upload(rt: Runtime, ref: dict, progress: progress_mod.Callback | None = None) -> dict:
    """Store the artifact on every tier, then the signed manifest last (the commit marker)."""
    backup_id = ref["backup_id"]
    target = rt.target(ref["target"])
    existing = _committed_manifest(rt, target, backup_id)
    if existing is not None:  # redelivered after the commit: nothing left to do
        return _upload_result(existing)
    rt.catalog.set_stage(backup_id, "upload")
    upload_started = time.monotonic()
    run_dir = rt.run_dir(backup_id, create=False)
    name = staging.name_of(ref)
    key = f"{manifest.prefix(target.name, backup_id)}/{name}"
    locations: list[Location] = []
    failures: list[BaseException] = []
    etags: dict[str, str | None] = {}  # what each tier said it stored; verify compares without a full read
    tiers = rt.config.tiers_of(target)
    linked = False
    with following.follow(run_dir, ref, "upload") as src:
        for n, tier in enumerate(tiers):
            try:
                storage = rt.storage(tier)
                info = None
                # One tier at most takes the staged file by hard link, once it is sealed: two tiers
                # sharing one inode would be one copy, not two. A tier on another filesystem, or
                # behind a bandwidth limit, has no link (None, or no LinkIn) and is copied to.
                if not linked and isinstance(storage, LinkIn):
                    sealed = src.seal or src.wait_sealed()
                    info = storage.link_in(key, sealed["path"])
                    linked = info is not None
                    if linked and progress is not None:
                        progress("upload", sealed["size"] * (n + 1), sealed["size"] * len(tiers))
                if info is None:
                    info = _copy_to(storage, key, src, ref, n, len(tiers), progress)
                sealed = src.seal
                if info.size != sealed["size"] or (info.sha256 and info.sha256 != sealed["sha256"]):
                    storage.delete(key)
                    raise StorageError(
                        f"upload of {backup_id} to tier '{tier.name}' stored {info.size} bytes with sha256 "
                        f"{(info.sha256 or 'not computed')[:16]}…, but {name} was sealed at {sealed['size']} bytes with "
                        f"sha256 {(sealed['sha256'] or '')[:16]}… when it was written: it changed in staging since",
                        "check the tier's free space and health, and that nothing else writes in staging_dir, "
                        "then run the backup again",
                    )
            except (StorageError, TransientError) as exc:
                # One tier down must not cost the copies on the others: carry on, commit
                # what was stored, then fail the run so the missing copy is alerted and retried.
                failures.append(exc)
                events.emit(rt.catalog, events.UPLOAD_TIER_FAILED, f"upload of {backup_id} to tier '{tier.name}' failed: {exc}",
                            target=target.name, host=target.host, backup_id=backup_id, tier=tier.name,
                            error_type=type(exc).__name__, remedy=getattr(exc, "remedy", ""))
                continue
            locations.append(Location(tier=tier.name, key=key, size=info.size))
            etags[tier.name] = info.etag
    if not locations:
        raise failures[0]
    ref = following.merged(ref, src.seal)  # a stored copy means the input was read, or linked, to its seal
    dumped = json.loads((run_dir / "dump.json").read_text())
    report = json.loads((run_dir / "source.json").read_text())
    listing = _upload_listing(rt, run_dir, target, backup_id, locations, bool(ref.get("encrypted")))
    # Only beside a complete artifact: the manifest is the commit marker.
    doc = markers.write(manifest.MANIFEST_NAME, {
        "target": target.name,
        "kind": target.kind,
        "type": dumped.get("type", "full"),
        "parent": dumped.get("parent"),
        **{k: dumped[k] for k in ("requested_type", "note") if dumped.get(k) and dumped.get("requested_type") != "full"},
        **({"listing": listing} if listing else {}),
        "host": target.host,
        "worker": socket.gethostname(),
        "created_at": dumped["created_at"],
        "finished_at": timefmt.iso(timefmt.now()),
        "tool_versions": manifest.tool_versions(report.pop("tool_versions", None)),
        "plaintext": {"size": dumped["size"], "sha256": dumped["sha256"], "format": plaintext_suffix(source_for(target.kind), target)},
        "compression": {"method": ref.get("compression", "none"), "level": ref.get("level")},
        "encryption": {"method": "age", "recipients": [keys.key_id(r) for r in rt.settings.recipients]} if ref.get("encrypted") else None,
        "stored": {"name": name, "size": ref["size"], "sha256": ref["sha256"]},
        "locations": [{"tier": l.tier, "key": l.key, **({"etag": etags[l.tier]} if etags.get(l.tier) else {})}
                      for l in locations],
        "source": report,
        **_attachments(run_dir),
        "timings": {**_stage_seconds(run_dir), "upload": round(time.monotonic() - upload_started, 3)},
    }, target=target.name, backup_id=backup_id, tiers=[l.tier for l in locations], signer=rt.signer, storage=rt.storage)
    if failures:
        # The committed copies are recorded; the run stays running for a retry, and pipeline.fail
        # marks it failed (staging removed, chain.failed emitted) if the retries run out.
        rt.catalog.record_partial_upload(backup_id, doc, locations, summary=manifest.summary(doc))
        raise failures[0]
    rt.catalog.record_upload(backup_id, doc, locations, summary=manifest.summary(doc), next_stage=AFTER_UPLOAD)
    size_check.check_after_upload(rt, backup_id)  # size far off the target's median: alert (never raises)
    if listing:
        listing_store.cache_listing(rt, target.name, backup_id, run_dir / listing_store.LISTING_NAME)
    cleanup_staging(rt, backup_id)
    return _upload_result(doc)


def _copy_to(storage, key: str, src: following.Following, ref: dict, n: int, tiers: int,
             progress: progress_mod.Callback | None):
    """Copy the staged file to one tier: the first copy follows it as it is written, later ones read the sealed file."""
    if src.seal is None:  # not read to its end yet: follow it, from the start if a failed tier read part of it
        if src.size:
            src.seek(0)
        total = src.expected_size
        stream = progress_mod.reading(src, progress, "upload", total * tiers if total else None)
        return storage.put(key, stream, size_hint=total)
    sealed = src.seal
    with staging.open_sealed(sealed, "upload") as fh:  # progress counts every tier's copy: n copies of size bytes
        stream = progress_mod.reading(fh, progress, "upload", sealed["size"] * tiers, offset=sealed["size"] * n)
        return storage.put(key, stream, size_hint=sealed["size"])


def _upload_listing(rt: Runtime, run_dir: Path, target, backup_id: str, locations: list[Location],
                    encrypted: bool) -> dict | None:
    """Put the tree listing beside the artifact on every tier that took the artifact; its record for the manifest."""
    sealed = listing_store.seal_listing(rt, run_dir, encrypted)
    if sealed is None:
        return None
    key = f"{manifest.prefix(target.name, backup_id)}/{sealed['name']}"
    for loc in locations:
        storage = rt.storage(loc.tier)
        with open(sealed["path"], "rb") as fh:
            info = storage.put(key, fh, size_hint=sealed["size"])
        if info.size != sealed["size"]:
            raise StorageError(f"upload of the listing of {backup_id} to tier '{loc.tier}' stored {info.size} bytes, "
                               f"expected {sealed['size']}", "check the tier's free space and health, then run the backup again")
    return {k: v for k, v in sealed.items() if k != "path"}


def _attachments(run_dir: Path) -> dict:
    """The sealed side files the dump stage left (see attachments.py), as the manifest carries them."""
    path = run_dir / "attachments.json"
    return {"attachments": json.loads(path.read_text())} if path.exists() else {}


def _stage_seconds(run_dir: Path) -> dict:
    """How long each stage took, from the stage references (a skipped stage has none)."""
    out = {}
    for stage in STAGES[:STAGES.index("upload")]:
        path = run_dir / f"{stage}.json"
        seconds = json.loads(path.read_text()).get("seconds") if path.exists() else None
        if seconds is not None:
            out[stage] = seconds
    return out


def _committed_manifest(rt: Runtime, target, backup_id: str) -> dict | None:
    """The manifest if every tier already holds it, else None (then the upload is redone)."""
    doc = None
    for tier in rt.config.tiers_of(target):
        try:
            with rt.storage(tier).get(manifest.manifest_key(target.name, backup_id)) as fh:
                doc = manifest.parse(fh.read(), backup_id=backup_id)
        except (StorageError, TransientError):  # missing, or the tier is down: not committed there, redo
            return None
    row = rt.catalog.find(backup_id) if doc is not None else None
    if row is not None:
        # Record it only for a run still in flight: an upload redelivered long after (a broker
        # that lost track of its ack) must not turn a verified backup back into "uploaded".
        if row.status == Status.RUNNING:
            locations = [Location(tier=l["tier"], key=l["key"], size=doc["stored"]["size"]) for l in doc["locations"]]
            rt.catalog.record_upload(backup_id, doc, locations, summary=manifest.summary(doc), next_stage=AFTER_UPLOAD)
        cleanup_staging(rt, backup_id)
    return doc


def _upload_result(doc: dict) -> dict:
    return {
        "backup_id": doc["backup_id"], "target": doc["target"], "stage": "upload",
        "size": doc["stored"]["size"], "sha256": doc["stored"]["sha256"],
        "locations": doc["locations"],
    }


def cleanup_staging(rt: Runtime, backup_id: str) -> None:
    shutil.rmtree(Path(rt.settings.staging_dir) / backup_id, ignore_errors=True)


def fail(rt: Runtime, backup_id: str, target: str | None, stage: str, error: BaseException) -> None:
    """The chain's error callback: record why, remove the run's staging files, emit an event.

    Safe to call more than once for one run (the start task and the failing stage both
    report in the embedded default): only the first call records and emits.
    """
    reason = f"{stage} failed: {error}"
    outcome = rt.catalog.fail_run(backup_id, reason)
    cleanup_staging(rt, backup_id)
    if outcome == "unchanged":
        return
    host = None
    if target:
        try:
            host = rt.target(target).host
        except InputError:
            pass
    events.emit(rt.catalog, events.CHAIN_FAILED if outcome == "failed" else events.VERIFY_INCOMPLETE, reason,
                target=target, host=host, backup_id=backup_id, stage=stage, error_type=type(error).__name__,
                remedy=getattr(error, "remedy", ""))
