"""The targets file (README: Configure): loaded once, validated fully, then immutable.

Validation happens at load time so that a typo fails the operator's command, not the
backup at 02:00. Every error names the file, the target or tier, and the field.
Environment variables ``BACKUP_<SETTING>`` override ``[settings]``; credentials stay
references (see credentials.py).

    loader.py     finding and reading the file; credential references resolved
    model.py      Config, Settings, Tier, Target: what a loaded file is
    settings.py   [settings]            alerts.py   its alert and report settings
    tiers.py      [tiers.<name>]        targets.py  [targets.<name>]
    drill.py      a target's drill table          schedules.py  cron and @every
    api.py        [api]                 checks.py   field checks every table shares

Source and tier kinds are not listed here: the loader asks their registries
(``backup_tasks.sources.base``, ``backup_tasks.storage``) what a kind accepts.
"""

from backup_tasks.config.checks import NAME_RE
from backup_tasks.config.loader import load, locate
from backup_tasks.config.model import Config, Settings, Target, Tier, stage_time_limits

__all__ = ["NAME_RE", "Config", "Settings", "Target", "Tier", "load", "locate", "stage_time_limits"]
