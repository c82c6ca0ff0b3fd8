"""backupctl targets | keys generate | catalog rebuild."""

from __future__ import annotations

from pathlib import Path

import click

from backup_tasks.cli.context import Context, common


@click.command("targets")
@common
def targets(ctx: Context):
    """Validated targets and tiers, with credentials shown as references only."""
    from backup_tasks.ops.mysql_pitr.ship import server_checks

    rt = ctx.rt
    cfg = rt.config
    binlog = server_checks(rt)  # a binlog target whose server writes no binary log fails here, naming the setting
    data = {
        "config": cfg.file,
        "mode": "embedded" if cfg.settings.embedded else "distributed",
        "encryption": {"recipients": [_kid(r) for r in cfg.settings.recipients]},
        "tiers": {name: {"kind": t.kind, "path": t.path, "max_age_days": t.max_age_days, "credentials": t.credentials, **t.options}
                  for name, t in cfg.tiers.items()},
        "targets": {name: t.redacted() for name, t in cfg.targets.items()},
    }
    for name, state in binlog.items():
        data["targets"][name]["binlog_server"] = state

    def human(c, d):
        from rich.table import Table  # rich only when printing for people: a --json command starts without it

        c.print(f"config {d['config']} ({d['mode']}); encrypting to key ids: {', '.join(d['encryption']['recipients']) or '[red]none[/]'}")
        table = Table("target", "kind", "host", "schedule", "storage", "what")
        for name, t in d["targets"].items():
            what = ", ".join(t.get("paths", [])) or t.get("path") or t.get("dsn", "")
            table.add_row(name, t["kind"], t["host"], t["schedule"], ",".join(t["storage"]), what)
        c.print(table)
        for name, t in d["targets"].items():
            for warning in (t.get("binlog_server") or {}).get("warnings", []):
                c.print(f"[yellow]warning[/] {name}: {warning}", markup=True)
            if t.get("binlog_server", {}).get("checked") is False:
                c.print(f"[yellow]not checked[/] {name}: {t['binlog_server']['reason']}", markup=True)

    ctx.out.result(data, human)


def _kid(recipient: str) -> str:
    from backup_tasks.records.keys import key_id

    return key_id(recipient)


@click.group("keys")
def keys_group():
    """Key management."""


@keys_group.command("generate")
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), required=True)
@common
def keys_generate(ctx: Context, out: Path):
    """Write an age identity + recipient and an Ed25519 signing key pair (all 0600, directory 0700)."""
    from backup_tasks.records import keys

    made = keys.generate(out)
    ctx.record_if_configured("keys.generate", {"directory": str(out), "recipient_key_id": made.recipient_key_id,
                                               "signing_key_id": made.signing_key_id})
    data = {
        "directory": str(made.directory),
        "recipient": made.recipient,
        "recipient_key_id": made.recipient_key_id,
        "signing_key_id": made.signing_key_id,
        "files": {
            "identity": str(out / keys.IDENTITY_FILE),
            "recipient": str(out / keys.RECIPIENT_FILE),
            "signing_key": str(out / keys.SIGNING_KEY_FILE),
            "signing_public_key": str(out / keys.SIGNING_PUB_FILE),
        },
    }

    def human(c, d):
        c.print(f"wrote keys to {d['directory']} (mode 0600)")
        c.print(f"recipient (public, for workers): {d['recipient']}  key id {d['recipient_key_id']}")
        c.print(f"identity (private): {d['files']['identity']} - keep an offline copy; only restore hosts need it")
        c.print("add to \\[settings]:")
        c.print(f'  recipients_file = "{d["files"]["recipient"]}"\n  identities_file = "{d["files"]["identity"]}"\n'
                f'  signing_key_file = "{d["files"]["signing_key"]}"', markup=False)

    ctx.out.result(data, human)


@click.group("catalog")
def catalog_group():
    """Catalog maintenance."""


@catalog_group.command("rebuild")
@common
def catalog_rebuild(ctx: Context):
    """Recreate the catalog from the manifests in storage alone (e.g. after losing the catalog)."""
    from backup_tasks.ops.rebuild import rebuild_catalog

    with ctx.audited("catalog.rebuild") as entry:
        result = rebuild_catalog(ctx.rt)
        entry.detail.update(backups=result["backups"], verified=result["verified"], skipped=len(result["skipped"]))
    ctx.out.result(result, lambda c, d: (
        c.print(f"catalog rebuilt from {', '.join(d['tiers'])}: {d['backups']} backups ({d['verified']} verified, {d['drills_restored']} drill-proven), "
                f"{d['log_files']} shipped log files" + (f", {d['binlogs']} shipped binary logs" if d.get("binlogs") else "")),
        [c.print(f"  [yellow]skipped[/] {s['key']} on {s['tier']}: {s['reason']}") for s in d["skipped"]],
    ))


COMMANDS = (targets, keys_group, catalog_group)
