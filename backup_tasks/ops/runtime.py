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

from backup_tasks import alerting
from backup_tasks import config as config_mod
from backup_tasks.records import events
from backup_tasks.records.catalog import Catalog
from backup_tasks.config import Config, Target, Tier
from backup_tasks.records.keys import Signer, Verifier, recipients

log = logging.getLogger(__name__)


class Runtime:
    def __init__(self, config: Config) -> None:
        self.config = config
        self._tiers: dict[str, object] = {}

    @property
    def settings(self):
        return self.config.settings

    @cached_property
    def catalog(self) -> Catalog:
        return Catalog(self.settings.catalog_url)

    @cached_property
    def signer(self) -> Signer:
        return Signer.from_file(self.settings.signing_key_file)

    @cached_property
    def verifier(self) -> Verifier:
        return Verifier.from_settings(self.settings.signing_key_file, self.settings.signing_public_key_file)

    @cached_property
    def recipients(self):
        return recipients(self.settings.recipients)

    def storage(self, tier: Tier | str):
        from backup_tasks.storage import open_tier

        tier = self.config.tiers[tier] if isinstance(tier, str) else tier
        if tier.name not in self._tiers:
            self._tiers[tier.name] = open_tier(tier)
        return self._tiers[tier.name]

    def target(self, name: str) -> Target:
        return self.config.target(name)

    def run_dir(self, backup_id: str) -> Path:
        """Private staging directory of one run (0700): plaintext may pass through it."""
        root = Path(self.settings.staging_dir)
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = root / backup_id
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
    try:
        rt = current()
    except Exception:  # noqa: BLE001 - e.g. a library user without BACKUP_CONFIG: nowhere to send
        log.debug("no configuration loaded: alerts are not sent")
        return None
    return alerting.on_event(catalog, settings=rt.settings, config=rt.config, **event)
