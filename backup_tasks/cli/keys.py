"""backupctl keys rotate | keys status (``keys generate`` lives with the first-run commands in admin.py)."""

from __future__ import annotations

from pathlib import Path

import click

from backup_tasks.cli.admin import keys_group
from backup_tasks.cli.context import Context, common


@keys_group.command("rotate")
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="a new directory for the new keys (never one holding keys already)")
@click.option("--signing", is_flag=True, help="also make a new manifest signing key; the old public key stays trusted")
@common
def keys_rotate(ctx: Context, out: Path, signing: bool):
    """Write a new age key pair (and signing key) and print the configuration change that makes it current."""
    from backup_tasks.errors import ConfigError
    from backup_tasks.ops.keys.rotation import rotate

    try:
        settings = ctx.rt.settings
    except ConfigError:
        if ctx.config_path:  # a named configuration that does not load is an error, not "no configuration"
            raise
        settings = None
    data = rotate(out, signing=signing, settings=settings)
    ctx.record_if_configured("keys.rotate", {"directory": data["directory"], "recipient_key_id": data["recipient_key_id"],
                                             "previous_recipient_key_ids": data["previous_recipient_key_ids"],
                                             "signing_key_id": data["signing_key_id"]})
    ctx.out.result(data, _print_rotation)


def _print_rotation(c, d: dict) -> None:
    change = d["config_change"]
    was = ", ".join(d["previous_recipient_key_ids"]) or "none configured"
    c.print(f"wrote a new age key pair{' and signing key' if d['signing_key_id'] else ''} to {d['directory']} (mode 0600)")
    c.print(f"new recipient key id {d['recipient_key_id']} (current now: {was})")
    c.print("make these changes, in this order:")
    c.print("1. on every host that verifies or restores, add the new identity to the identities file (keep the old ones):")
    c.print(f"     {change['identities_file']['command']}", markup=False)
    c.print("2. in [settings] of the targets file (workers pick it up at their next task):", markup=False)
    for key, value in change["settings"].items():
        c.print(f'     {key} = "{value}"', markup=False)
    for key in change["remove_settings"]:
        c.print(f"     and remove any {key} = [...] line: only the new recipient is current", markup=False)
    c.print("3. then move old backups onto the new key: backupctl reencrypt --wait")
    c.print("   backupctl keys status says when an old identity can be deleted (role 'retired').")


@keys_group.command("status")
@common
def keys_status(ctx: Context):
    """Per key id: current, old or retired, and how many backups, WAL files, binlogs and stored objects depend on it, per tier."""
    from backup_tasks.ops.keys.status import key_status

    data = key_status(ctx.rt)

    def human(c, d):
        from rich.table import Table  # rich only when printing for people: a --json command starts without it

        table = Table("key id", "role", "first used", "backups", "WAL files", "binlogs", "objects per tier", "identity here",
                      "deletable")
        for k in d["keys"]:
            tiers = ", ".join(f"{t}: {n['objects']}" for t, n in k["tiers"].items()) or "-"
            table.add_row(k["key_id"], k["role"], k["first_used"] or "-", str(k["backups"]), str(k["wal_files"]),
                          str(k["binlogs"]), tiers,
                          "yes" if k["identity_here"] else "no", "yes" if k["deletable"] else "no")
        c.print(table)
        for warning in d["warnings"]:
            c.print(f"[yellow]warning:[/] {warning}")

    ctx.out.result(data, human)
