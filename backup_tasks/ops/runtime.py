"""What a process needs to do work: the loaded config and the handles built from it.

Workers build one Runtime per process from BACKUP_CONFIG; the CLI builds one from
--config. The runtime made current is also where the process's alerts go: making one
current gives ``events.emit`` its notifier. Handles (catalog engine, tiers, keys) are
created on first use, so a host that never verifies never needs to read identities.
"""

from __future__ import annotations

import logging
import os
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from backup_tasks import config as config_mod
from backup_tasks.records import events, manifest
from backup_tasks.records.catalog import Catalog
from backup_tasks.config import Config, Target, Tier
from backup_tasks.storage import Storage, open_tier

if TYPE_CHECKING:
    from backup_tasks.records.keys import Signer, Verifier

log = logging.getLogger(__name__)


class Runtime:
    def __init__(self, config: Config) -> None:
        self.config = config
        self._tiers: dict[str, Storage] = {}

    @property
    def settings(self):
        return self.config.settings

    @cached_property
    def catalog(self) -> Catalog:
        return Catalog(self.settings.catalog_url)

    # The keys (cryptography, pyrage) are imported on first use: a command that only reads the catalog never signs.
    @cached_property
    def signer(self) -> Signer:
        from backup_tasks.records.keys import Signer

        return Signer.from_file(self.settings.signing_key_file)

    @cached_property
    def verifier(self) -> Verifier:
        from backup_tasks.records.keys import Verifier

        return Verifier.from_settings(self.settings.signing_key_file, self.settings.signing_public_key_file)

    @cached_property
    def recipients(self):
        from backup_tasks.records.keys import recipients

        return recipients(self.settings.recipients)

    def storage(self, tier: Tier | str) -> Storage:
        """The tier, opened once per process; a write it refuses becomes an event in the catalog."""
        tier = self.config.tiers[tier] if isinstance(tier, str) else tier
        if tier.name not in self._tiers:
            self._tiers[tier.name] = open_tier(tier, on_refused=self._tier_refused)
        return self._tiers[tier.name]

    def _tier_refused(self, message: str, remedy: str, detail: dict) -> None:
        """Record a tier's refusal to write as an error event naming the run it refused.

        The run comes from the refused object's key, so the alert says which target and
        run, and gives the command that re-runs that target.
        """
        run = manifest.backup_of_key(detail.get("key") or "")
        target, backup_id = run if run is not None and run[0] in self.config.targets else (None, None)
        host = self.config.targets[target].host if target else None
        events.emit(self.catalog, events.TIER_REFUSED, message, target=target, host=host, backup_id=backup_id,
                    remedy=remedy, **detail)

    def target(self, name: str) -> Target:
        return self.config.target(name)

    def staging_root(self) -> Path:
        """The staging directory, created private (0700) if missing: plaintext passes through it.

        Every scratch directory (a run's, a restore's, a drill's, the mailed report's)
        is made inside it, so they all share its permissions and its free space.
        """
        root = Path(self.settings.staging_dir)
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        return root

    def run_dir(self, backup_id: str, *, create: bool = True) -> Path:
        """Private staging directory of one run (0700): plaintext may pass through it.

        ``create=False`` for a stage that follows another's output: the directory exists
        while the run does, and a run that failed meanwhile must not get it back.
        """
        path = self.staging_root() / backup_id
        if create:
            path.mkdir(mode=0o700, exist_ok=True)
        return path


_current: Runtime | None = None


def current() -> Runtime:
    """The process-wide runtime, loaded from BACKUP_CONFIG the first time a task needs it."""
    if _current is None:
        install(Runtime(config_mod.load(os.environ.get("BACKUP_CONFIG"))))
    return _current


def install(runtime: Runtime) -> Runtime:
    """Make ``runtime`` the process-wide one (the CLI, the API and the embedded default do this).

    From then on the events this process emits are alerted with its settings.
    """
    global _current
    _current = runtime
    events.set_notifier(_alert)
    return runtime


def _alert(catalog, **event):
    """The notifier of ``events.emit``: alert with the settings and targets of the process's runtime.

    The runtime is looked up at each event rather than bound when installed, so an event
    can never be alerted with settings the process has since replaced.
    """
    from backup_tasks import alerting  # only a process that emits an event needs the channels

    try:
        rt = current()
    except Exception:  # noqa: BLE001 - e.g. a library user without BACKUP_CONFIG: nowhere to send
        log.debug("no configuration loaded: alerts are not sent")
        return None
    return alerting.on_event(catalog, settings=rt.settings, config=rt.config, **event)


def close() -> None:
    """Close what the process-wide runtime opened, for a process about to end without the interpreter's teardown.

    The catalog's pooled connections are closed here rather than left to the garbage collector:
    SQLite checkpoints its write-ahead log and removes the -wal file when the last connection to
    the database closes. Nothing is opened that was not already.
    """
    if _current is not None and "catalog" in _current.__dict__:
        _current.catalog.engine.dispose()
