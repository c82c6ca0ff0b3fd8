"""Runbook: the [api] table, and the token an operator makes for it.

A token is made once with ``backupctl api token``; the config holds only its sha256, and
that line, pasted as printed, lets exactly that token in. Every mistake in [api] fails
the load naming the field, like the rest of the targets file.
"""

from __future__ import annotations

import json

import pytest

from backup_tasks import config
from backup_tasks.api.auth import authenticate
from backup_tasks.errors import ConfigError
from conftest import run_cli, write_config

FILES = '[targets.uploads]\nkind = "files"\npaths = ["/srv/app/uploads"]\n'
HASH = "sha256:" + "ab" * 32


def load(tmp_path, session_keys, api: str):
    return config.load(write_config(tmp_path / "targets.toml", session_keys, targets=FILES + api), environ={})


def test_a_made_token_pasted_as_printed_lets_in_that_token_only(tmp_path, session_keys):
    made = json.loads(run_cli("api", "token", "--name", "billing-app", "--role", "operator", "--json", check=0).stdout)
    assert made["token"].startswith("bt_") and len(made["token"]) > 40
    assert made["token"] not in made["config_line"]  # only its hash goes into the file
    cfg = load(tmp_path, session_keys, f'[api]\nrestore_roots = ["restore"]\n{made["config_table"]}\n{made["config_line"]}\n')

    token = cfg.api.tokens["billing-app"]
    assert (token.role, token.hash.startswith("sha256:")) == ("operator", True)
    assert cfg.api.restore_roots == ((tmp_path / "restore").resolve(),)  # relative to the config file, like other paths
    assert cfg.api.max_body_bytes == 1 << 20
    assert authenticate(cfg.api.tokens, f"Bearer {made['token']}") == token
    assert authenticate(cfg.api.tokens, f"bearer {made['token']}") == token
    for wrong in (None, "", made["token"], f"Bearer {made['token']}x", f"Basic {made['token']}", f"Bearer {token.hash}"):
        assert authenticate(cfg.api.tokens, wrong) is None
    assert token.allows("viewer") and token.allows("operator") and not token.allows("admin")
    second = json.loads(run_cli("api", "token", "--name", "billing-app", "--role", "operator", "--json", check=0).stdout)
    assert second["token"] != made["token"]  # random each time


@pytest.mark.parametrize("api, field, says", [
    ('[api]\nrestore_root = ["/srv/restore"]\n', "restore_root", "did you mean 'restore_roots'"),
    ('[api.tokens]\nci = { hash = "bt_the-token-itself", role = "viewer" }\n', "hash", "never the token itself"),
    (f'[api.tokens]\nci = {{ hash = "{HASH}", role = "root" }}\n', "role", "viewer, operator, admin"),
    (f'[api.tokens]\nci = {{ hash = "{HASH}" }}\n', "role", "missing role"),
    (f'[api.tokens]\nci = {{ hash = "{HASH}", role = "viewer" }}\nbot = {{ hash = "{HASH}", role = "admin" }}\n', "hash",
     "the same token hash as 'ci'"),
    (f'[api.tokens]\n"bad name" = {{ hash = "{HASH}", role = "viewer" }}\n', "", "invalid token name"),
    (f'[api.tokens]\nanonymous = {{ hash = "{HASH}", role = "viewer" }}\n', "", "is reserved"),
    (f'[api.tokens]\nci = {{ hash = "{HASH}", role = "viewer", expires = "never" }}\n', "expires", "allowed fields: hash, role"),
    ('[api]\ntokens = "sha256:abc"\n', "tokens", "table of named tokens"),
    ('[api]\nrestore_roots = ["/"]\n', "restore_roots", "filesystem root"),
    ('[api]\nrestore_roots = "/srv/restore"\n', "restore_roots", "list of directory paths"),
    ('[api]\nmax_body_bytes = 10\n', "max_body_bytes", "between 1024 and 16777216"),
    ('[api]\nmax_body_bytes = true\n', "max_body_bytes", "between 1024"),
])
def test_a_mistake_in_the_api_table_names_the_field(tmp_path, session_keys, api, field, says):
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, session_keys, api)
    assert says in str(caught.value)
    assert caught.value.field == field and "api" in caught.value.where


def test_serve_refuses_to_start_without_tokens(tmp_path, session_keys):
    cfg = write_config(tmp_path / "targets.toml", session_keys, targets=FILES)
    done = run_cli("api", "serve", "--port", "1", "--json", config=cfg, check=2)
    error = json.loads(done.stdout)["error"]
    assert error["type"] == "ConfigError" and "backupctl api token" in error["remedy"]
