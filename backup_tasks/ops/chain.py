"""Chains of files backups: which backup an incremental or differential builds on, and what it depends on.

An incremental's parent is the target's newest verified backup of any type; a
differential's is the newest verified full. Only a verified parent counts: a run that
crashed or failed verification is never built on, so the chain skips it and stays
valid. With no usable parent the run is a full, and its ref, manifest and result say so.
Restore and verify walk the chain the other way (``parent_chain``): every parent must be
in the catalog, verified and readable in storage.
"""

from __future__ import annotations

import logging
from pathlib import Path

from backup_tasks.errors import BackupError, InputError, KeyMissing, VerificationFailed
from backup_tasks.ops import listing_store, readback
from backup_tasks.ops.runtime import Runtime
from backup_tasks.records.catalog import Status
from backup_tasks.sources.base import source_for
from backup_tasks.sources.files.changes import Chain
from backup_tasks.sources.files.listing import ListingTally
from backup_tasks.sources.files.tree_listing import read_listing

log = logging.getLogger(__name__)

CHAIN_TYPES = ("incremental", "differential")


def check_chain_type(target, type_: str) -> None:
    """Incremental and differential backups exist for kinds whose source builds chains (files, config)."""
    if type_ in CHAIN_TYPES and not getattr(source_for(target.kind), "chains", False):
        raise InputError(
            f"{type_} backups are not available for target '{target.name}' (kind {target.kind}): they are for files "
            "and config targets",
            "a database's changes between full dumps are covered by point-in-time recovery (PostgreSQL mode = "
            "\"physical\" with WAL archiving, MySQL/MariaDB binlog = true); run --type full",
        )


def choose_parent(rt: Runtime, target, requested: str) -> dict:
    """``{"type", "parent", "requested_type"[, "note"]}`` for a run of ``target`` asked to be ``requested``."""
    plan = {"type": requested, "parent": None, "requested_type": requested}
    if requested not in CHAIN_TYPES:
        return plan
    for row in rt.catalog.list(target=target.name, status=Status.VERIFIED):
        if requested == "differential" and row.type != "full":
            continue
        if not (row.manifest or {}).get("listing"):
            continue  # taken before backups had tree listings: nothing to compare with
        plan["parent"] = row.id
        return plan
    wanted = "verified full backup" if requested == "differential" else "verified backup"
    plan.update(type="full", note=f"no {wanted} of '{target.name}' with a tree listing to build on: ran as a full backup")
    return plan


def prepare_dump(rt: Runtime, target, ref: dict, workdir: Path, listing_out: Path) -> tuple[Chain, dict]:
    """The dump's ``Chain`` and the run's chain facts (type, parent, requested_type, note).

    Decided here, on the target's host and under its run lock, so the parent is the last
    run that finished. The parent's listing comes from this host's cache (written after
    each upload) or else from storage; if neither can be read (e.g. an encrypted listing
    and no identity on this host) the run is a full, and says why.
    """
    plan = choose_parent(rt, target, ref.get("type", "full"))
    parent_listing = None
    if plan["parent"]:
        parent_listing = workdir / "parent-listing.jsonl.zst"
        try:
            listing_store.parent_listing(rt, target.name, plan["parent"], parent_listing)
        except (KeyMissing, VerificationFailed, InputError) as exc:
            log.warning("backup %s: parent %s unusable, running a full: %s", ref["backup_id"], plan["parent"], exc)
            plan.update(type="full", parent=None, note=f"the listing of parent backup {plan['parent']} could not be read "
                                                        f"({exc.message}): ran as a full backup")
            parent_listing = None
    spec = Chain(backup_id=ref["backup_id"], listing_out=listing_out, parent_listing=parent_listing,
                 rehash=bool(ref.get("rehash")))
    return spec, plan


def parent_chain(rt: Runtime, doc: dict) -> list[tuple[str, readback.Located]]:
    """The backups this one depends on, nearest parent first, as the signed manifests name them.

    VerificationFailed (check ``chain``) naming the first parent that is missing from the
    catalog, deleted, not verified, or not readable in storage.
    """
    chain: list[tuple[str, readback.Located]] = []
    current = doc
    while current.get("parent"):
        parent_id = current["parent"]
        row = rt.catalog.find(parent_id)
        why = None
        if row is None:
            why = "is not in the catalog"
        elif row.status == Status.DELETED:
            why = "was deleted"
        elif row.status != Status.VERIFIED:
            why = f"is {row.status}, not verified"
        if why is None:
            try:
                found = readback.locate(rt, row)
                current = found.doc
            except BackupError as exc:
                why = f"cannot be read from storage ({exc})"
        if why is not None:
            raise VerificationFailed(
                f"backup {doc['backup_id']} depends on parent backup {parent_id}, which {why}",
                f"restore an older point whose chain is whole, or bring {parent_id} back (e.g. catalog rebuild if only "
                "the catalog lost it); the next full backup starts a new chain", check="chain")
        if any(parent_id == seen for seen, _ in chain):
            raise VerificationFailed(f"backup {doc['backup_id']}: its chain loops at {parent_id}",
                                     "do not trust these manifests; restore from another backup", check="chain")
        chain.append((parent_id, found))
    return chain


def check_listing(rt: Runtime, found: readback.Located, listing: Path, tally: ListingTally | None = None) -> dict:
    """Verify's part for a backup with a tree listing, and for one in a chain its parents.

    ``listing``: the backup's listing, already fetched and proven against its signed
    sha256. Every other holder it names must be a parent in the chain, each present in
    the catalog, verified and readable in storage. Every file it says this backup holds
    must be in the archive with the same sha256: for a backup whose archive was checked
    against this same listing that is proven already, and ``tally`` (complete) says what
    else that read saw, so the listing is not read again; one whose manifest still
    carries the archive's file list is compared with that list here.
    """
    doc = found.doc
    parents = [pid for pid, _ in parent_chain(rt, doc)]
    if tally is None or not tally.complete:
        tally = _tally(doc, listing)
    for holder, path in tally.holders.items():
        if holder not in parents:
            raise VerificationFailed(
                f"backup {doc['backup_id']}: its listing names backup {holder} for {path!r}, which is not in its chain",
                "do not trust this backup; run a new full backup", check="listing")
    return {"listing_entries": tally.entries, "listing_files_here": tally.files_here,
            **({"parents_checked": parents} if parents else {})}


def _tally(doc: dict, listing: Path) -> ListingTally:
    """Read the listing for what ``check_listing`` needs, comparing the files it says this backup holds with the
    manifest's own file list if it carries one."""
    inside = (doc.get("source") or {}).get("files")
    archived = {e["path"]: e.get("sha256") for e in inside if e["type"] == "file"} if inside is not None else None
    tally = ListingTally()
    for entry in read_listing(listing):
        tally.entries += 1
        if entry["type"] != "file":
            continue
        holder = entry.get("in")
        if holder == doc["backup_id"]:
            tally.files_here += 1
            member = entry.get("member", entry["path"])
            if archived is not None and archived.get(member) != entry.get("sha256"):
                raise VerificationFailed(
                    f"backup {doc['backup_id']}: its listing says the archive holds {member!r} with another sha256, or not at all",
                    "do not trust this backup; run a new full backup", check="listing")
        elif holder not in tally.holders:
            tally.holders[holder] = entry["path"]
    tally.complete = True
    return tally
