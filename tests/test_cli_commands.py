"""The top-level command table: each command loads only its own module, so the table must name them all."""

from __future__ import annotations

import importlib
import pkgutil

import backup_tasks.cli as cli_package
from backup_tasks.cli import main


def test_every_module_command_is_in_the_table_under_its_own_module():
    found = {}
    for info in pkgutil.iter_modules(cli_package.__path__):
        if info.name == "__main__":  # importing it runs backupctl
            continue
        module = importlib.import_module(f"backup_tasks.cli.{info.name}")
        for command in getattr(module, "COMMANDS", ()):
            found[command.name] = info.name
    assert found, "no module of backup_tasks.cli defines COMMANDS"
    assert found == main._COMMAND_MODULES, (
        "a command added to a module's COMMANDS must be added to cli/main.py's _COMMAND_MODULES too, "
        "or `backupctl --help` will not list it")
