"""backupctl api serve | api token: run the HTTP API, and make a token for it."""

from __future__ import annotations

import secrets

import click

from backup_tasks import defaults
from backup_tasks.cli.context import Context, common
from backup_tasks.errors import ConfigError

#: tokens start with this so a leaked one is recognisable in a secret scanner
TOKEN_PREFIX = "bt_"


@click.group("api")
def api_group():
    """The HTTP API (README: HTTP API)."""


@api_group.command("serve")
@click.option("--host", default=defaults.API_HOST, show_default=True, help="address to listen on")
@click.option("--port", type=click.IntRange(1, 65535), default=defaults.API_PORT, show_default=True)
@click.option("--ssl-certfile", type=click.Path(dir_okay=False, exists=True), default=None, help="serve HTTPS with this certificate")
@click.option("--ssl-keyfile", type=click.Path(dir_okay=False, exists=True), default=None, help="... and this private key")
@common
def serve(ctx: Context, host, port, ssl_certfile, ssl_keyfile):
    """Serve /api/v1 with uvicorn until interrupted; the schema is at /openapi.json, docs at /docs."""
    import uvicorn

    from backup_tasks.api.app import create_app

    rt = ctx.rt
    if not rt.config.api.tokens:
        raise ConfigError("no API tokens are configured, so every call would be refused",
                          "make one with: backupctl api token --name NAME --role viewer, and add its line to [api.tokens]",
                          file=rt.config.file, where="[api]", field="tokens")
    if bool(ssl_certfile) != bool(ssl_keyfile):
        raise ConfigError("--ssl-certfile and --ssl-keyfile go together", "pass both, or neither (TLS at a proxy)")
    ctx.out.note(f"serving the HTTP API on http{'s' if ssl_certfile else ''}://{host}:{port}/api/v1 "
                 f"({len(rt.config.api.tokens)} token(s), {'embedded' if rt.settings.embedded else 'distributed'})")
    uvicorn.run(create_app(rt), host=host, port=port, ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile,
                log_level="info", access_log=True, server_header=False)


@api_group.command("token")
@click.option("--name", required=True, help="who holds it; the audit log shows api:NAME")
@click.option("--role", type=click.Choice(["viewer", "operator", "admin"]), required=True)
@common
def token(ctx: Context, name, role):
    """Make a random token: print it once, and the [api.tokens] line (its sha256, never the token) for the config."""
    from backup_tasks.config.api import NAME_RE, RESERVED_NAME, hash_token

    if not NAME_RE.match(name) or name == RESERVED_NAME:
        raise ConfigError(f"invalid token name '{name}'", "use 1-63 letters, digits, '.', '_' or '-', other than "
                          f"'{RESERVED_NAME}' (the audit log's name for calls without a token)")
    value = TOKEN_PREFIX + secrets.token_urlsafe(32)
    line = f'{name} = {{ hash = "{hash_token(value)}", role = "{role}" }}'
    # The hash is what the config will hold: enough to tell later which token this was, never the token.
    ctx.record_if_configured("api.token", {"name": name, "role": role, "hash": hash_token(value)})
    data = {"name": name, "role": role, "token": value, "config_line": line, "config_table": "[api.tokens]"}

    def human(c, d):
        c.print(f"token for {d['name']} ({d['role']}); shown once, give it to its holder over a safe channel:")
        c.print(f"  {d['token']}", markup=False)
        c.print("add this line under [api.tokens] in the targets file (a running backupctl api serve picks it up):", markup=False)
        c.print(f"  {d['config_line']}", markup=False)

    ctx.out.result(data, human)


COMMANDS = (api_group,)
