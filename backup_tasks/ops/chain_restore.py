"""Reading a point of a chain back: its listing, every backup it needs, each archive once.

Before anything is written, every parent is checked present and verified in the
catalog and readable in storage (``chain.parent_chain``), and the listing is checked
against the signed manifest. Then each backup whose archive holds wanted bytes is
streamed once, and its stored and plaintext sha256 are compared with its own signed
manifest when the stream ends. ``restore.py`` decides where the result lands.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO, Iterator

from backup_tasks.errors import InputError, VerificationFailed
from backup_tasks.ops import chain, listing_store, readback
from backup_tasks.ops.runtime import Runtime
from backup_tasks.sources.files import chain_extract


@contextlib.contextmanager
def planned(rt: Runtime, found: readback.Located, paths: tuple[str, ...] = ()) -> Iterator["Planned"]:
    """The plan of a restore of ``found`` (optionally only ``paths``), with its chain checked."""
    doc = found.doc
    located = {doc["backup_id"]: found}
    for parent_id, parent in chain.parent_chain(rt, doc):
        located[parent_id] = parent
    workdir = Path(tempfile.mkdtemp(prefix=f"restore-{doc['backup_id']}-", dir=rt.staging_root()))
    try:
        listing = listing_store.fetch_listing(rt, doc, found.tier, workdir / "listing.jsonl.zst")
        plan = chain_extract.ChainPlan(listing, workdir, chain_extract.normalise(paths))
        try:
            if plan.missing_paths:
                raise InputError(f"backup {doc['backup_id']} holds nothing at {', '.join(map(repr, plan.missing_paths))}",
                                 f"list what it holds with: backupctl show {doc['backup_id']} --files")
            strangers = [h for h, _, _ in plan.holders() if h not in located]
            if strangers:
                raise VerificationFailed(
                    f"backup {doc['backup_id']}'s listing names content in {', '.join(strangers)}, outside its chain",
                    "do not trust this backup; restore another point", check="chain")
            yield Planned(rt, plan, located, [p for p in located if p != doc["backup_id"]])
        finally:
            plan.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


class Planned:
    def __init__(self, rt: Runtime, plan: chain_extract.ChainPlan, located: dict, parents: list[str]) -> None:
        self.rt, self.plan, self.located, self.parents = rt, plan, located, parents

    def dry_run(self, dest: Path) -> dict:
        return {"chain": self.parents, **chain_extract.dry_run(self.plan, dest)}

    def write(self, dest: Path) -> dict:
        return {"chain": self.parents, **chain_extract.restore(self.plan, dest, self._open)}

    @contextlib.contextmanager
    def _open(self, backup_id: str) -> Iterator[BinaryIO]:
        found = self.located[backup_id]
        with readback.plaintext(self.rt, found) as (stream, stored, plain):
            yield stream
            plain.drain()
        readback.check_digests(found.doc, stored, plain)
