"""A typo in the targets file fails the operator's command, naming file, target and field (exit 2)."""

from __future__ import annotations

import json

import pytest

from backup_tasks import config
from backup_tasks.errors import ConfigError, InputError
from conftest import run_cli, write_config

FILES = '[targets.uploads]\nkind = "files"\npaths = ["/srv/app/uploads"]\n'


def load(tmp_path, session_keys, targets, *, keys=True, environ=None, **kw):
    path = write_config(tmp_path / "targets.toml", session_keys if keys else None, targets=targets, **kw)
    return config.load(path, environ=environ if environ is not None else {})


def test_the_design_example_loads(tmp_path, session_keys, monkeypatch):
    monkeypatch.setenv("SCHOOL_DB_PASSWORD", "s3cret-value")
    monkeypatch.setenv("DRILL_PASSWORD", "drill-value")
    shop_pass = tmp_path / "shop-db.pass"
    shop_pass.write_text("shop-secret\n")
    shop_pass.chmod(0o600)
    targets = f'''
[targets.school-db]
kind = "postgres"
host = "db01"
dsn = "postgresql://backup@db01:5432/school"
password = "env:SCHOOL_DB_PASSWORD"
schedule = "0 2 * * *"
storage = ["local"]
retention = {{ keep_last = 3, keep_daily = 7, keep_weekly = 4, keep_monthly = 6 }}
rpo_hours = 26
drill = {{ server = "postgresql://drill@drill01:5432/postgres", password = "env:DRILL_PASSWORD", checks = ["select count(*) > 0 from students"] }}

[targets.uploads]
kind = "files"
host = "app01"
paths = ["/srv/app/uploads"]
exclude = ["*.tmp", "node_modules/"]

[targets.app-sqlite]
kind = "sqlite"
host = "app01"
path = "/srv/app/data/app.db"

[targets.app-config]
kind = "config"
host = "app01"
paths = ["/srv/app/.env", "/srv/app/config"]

[targets.shop-db]
kind = "mysql"
host = "db02"
dsn = "mysql://backup@db02:3306/shop"
password = "file:{shop_pass}"
'''
    cfg = config.load(write_config(tmp_path / "t.toml", session_keys, targets=targets))
    assert set(cfg.targets) == {"school-db", "uploads", "app-sqlite", "app-config", "shop-db"}
    assert cfg.targets["uploads"].queue == "host.app01"
    assert cfg.targets["uploads"].schedule == "0 3 * * 0"  # files: weekly, Sunday 03:00
    assert cfg.targets["app-config"].schedule == "0 1 * * 6"
    assert cfg.targets["school-db"].retention["keep_daily"] == 7
    # the references travel, never the values
    shown = json.dumps([t.redacted() for t in cfg.targets.values()])
    assert "s3cret-value" not in shown and "shop-secret" not in shown and "env:SCHOOL_DB_PASSWORD" in shown


@pytest.mark.parametrize(
    "targets, field, words",
    [
        ('[targets.x]\nkind = "oracle"\npaths = ["/a"]\n', "kind", "unknown kind 'oracle'"),
        ('[targets.x]\nkind = "files"\npaths = ["/a"]\nschedule = "61 2 * * *"\n', "schedule", "invalid cron expression"),
        ('[targets.x]\nkind = "files"\npaths = ["/a"]\nschedule = "0 2 * *"\n', "schedule", "expected 5 fields"),
        ('[targets.x]\nkind = "sqlite"\npath = "/a.db"\npassword = "env:BACKUP_TEST_SURELY_UNSET"\n', "password", "does not resolve"),
        ('[targets.x]\nkind = "sqlite"\npath = "/a.db"\npassword = "file:/nonexistent/pass"\n', "password", "does not resolve"),
        ('[targets.x]\nkind = "sqlite"\npath = "/a.db"\npassword = "hunter2"\n', "password", "must be a reference"),
        ('[targets.x]\nkind = "files"\npaths = ["/a"]\nstorage = ["offsite"]\n', "storage", "unknown tier 'offsite'"),
        ('[targets."bad name!"]\nkind = "files"\npaths = ["/a"]\n', "", "invalid target name"),
        ('[targets.x]\nkind = "files"\npaths = ["/a"]\n[targets.X]\nkind = "files"\npaths = ["/b"]\n', "", "duplicate target name"),
        ('[targets.x]\nkind = "files"\npaths = ["/a"]\n[targets.x]\nkind = "files"\npaths = ["/b"]\n', "", "duplicate name"),
        ('[targets.x]\nkind = "files"\npahts = ["/a"]\n', "pahts", "did you mean 'paths'"),
        ('[targets.x]\nkind = "files"\npaths = ["relative/dir"]\n', "paths", "not an absolute path"),
        ('[targets.x]\nkind = "postgres"\nmode = "physical"\ndsn = "postgresql://postgres@127.0.0.1:5432/postgres"\n'
         'drill = { server = "postgresql://drill@drill01:5432/postgres" }\n', "drill", "temporary data directory"),
    ],
)
def test_each_config_error_names_file_target_and_field(tmp_path, session_keys, targets, field, words):
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, session_keys, targets)
    err = caught.value
    assert words in str(err)  # message or remedy
    assert str(tmp_path / "targets.toml") in err.message
    assert err.field == field
    assert err.remedy
    assert err.exit_code == 2


def test_a_config_target_without_recipients_is_refused(tmp_path):
    targets = '[targets.app-config]\nkind = "config"\npaths = ["/srv/app/.env"]\n'
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, None, targets, keys=False)
    assert caught.value.field == "recipients" and "target 'app-config'" in caught.value.message


def test_a_group_readable_credential_file_is_refused(tmp_path, session_keys):
    secret = tmp_path / "db.pass"
    secret.write_text("x")
    secret.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        load(tmp_path, session_keys, f'[targets.x]\nkind = "sqlite"\npath = "/a.db"\npassword = "file:{secret}"\n')


def test_a_worker_checks_only_its_own_hosts_credentials(tmp_path, session_keys):
    targets = ('[targets.x]\nkind = "sqlite"\nhost = "db01"\npath = "/a.db"\npassword = "env:BACKUP_TEST_SURELY_UNSET"\n'
               '[targets.y]\nkind = "files"\nhost = "app01"\npaths = ["/a"]\n')
    cfg = load(tmp_path, session_keys, targets, environ={"BACKUP_HOST": "app01"})
    assert cfg.settings.host == "app01" and "x" in cfg.targets


def test_environment_overrides_settings(tmp_path, session_keys):
    cfg = load(tmp_path, session_keys, FILES, environ={"BACKUP_COMPRESSION": "gzip", "BACKUP_BROKER_URL": "redis://127.0.0.1:6379/9"})
    assert cfg.settings.compression == "gzip"
    assert cfg.settings.broker_url == cfg.settings.result_backend == "redis://127.0.0.1:6379/9"
    assert not cfg.settings.embedded
    with pytest.raises(ConfigError, match="unknown compression 'lz4'") as caught:
        load(tmp_path, session_keys, FILES, environ={"BACKUP_COMPRESSION": "lz4"})
    assert caught.value.field == "compression"


def test_unknown_target_suggests_the_closest(tmp_path, session_keys):
    cfg = load(tmp_path, session_keys, FILES)
    with pytest.raises(InputError, match="did you mean 'uploads'"):
        cfg.target("upload")


def test_cli_exit_codes_and_json_errors(tmp_path, session_keys):
    bad = write_config(tmp_path / "bad.toml", session_keys, targets='[targets.x]\nkind = "oracle"\n')
    done = run_cli("targets", "--json", config=bad, check=2)
    err = json.loads(done.stdout)["error"]
    assert err["type"] == "ConfigError" and "unknown kind 'oracle'" in err["message"] and err["remedy"]

    good = write_config(tmp_path / "good.toml", session_keys, targets=FILES)
    done = run_cli("backup", "nope", "--json", config=good, check=2)
    assert "unknown target 'nope'" in json.loads(done.stdout)["error"]["message"]
    done = run_cli("targets", "--json", config=good, check=0)
    assert json.loads(done.stdout)["targets"]["uploads"]["kind"] == "files"
    done = run_cli("targets", config=tmp_path / "missing.toml", check=2)
    assert "does not exist" in done.stderr
    done = run_cli("list", "--status", "bogus", "--json", config=good, check=2)
    assert "bogus" in json.loads(done.stdout)["error"]["message"]


def test_no_config_at_all_says_how_to_give_one(tmp_path):
    done = run_cli("targets", env={"BACKUP_CONFIG": None}, cwd=tmp_path)
    assert done.returncode == 2 and "--config" in done.stderr


# What used to pass `backupctl targets` and fail only later (at backup, upload or cleanup):
# (settings lines, extra tier lines, target lines, where, field, words of the message)
LATE_FAILURES = {
    "missing signing key": ('signing_key_file = "{tmp}/no-such.key"\n', "", "", "[settings]", "signing_key_file",
                            "cannot read the signing key"),
    "signing key not a key": ('signing_key_file = "{keys}/age-recipient.txt"\n', "", "", "[settings]", "signing_key_file",
                              "is not a PEM private key"),
    "bandwidth word": ("", 'bandwidth_limit = "fast"\n', "", "tier 'local'", "bandwidth_limit", "invalid bandwidth_limit 'fast'"),
    "keep_within unit": ("", "", 'retention = { keep_within = "7x" }\n', "target 'x'", "retention.keep_within",
                         "invalid duration '7x'"),
    "rpo_hours boolean": ("", "", "rpo_hours = true\n", "target 'x'", "rpo_hours", "positive number of hours"),
    "keep_last boolean": ("", "", "retention = { keep_last = true }\n", "target 'x'", "retention.keep_last", "whole number"),
    "max_age_days boolean": ("", "max_age_days = true\n", "", "tier 'local'", "max_age_days", "whole number of days"),
    "beat lock boolean": ("beat_lock_timeout = true\n", "", "", "[settings]", "beat_lock_timeout", "not a whole number"),
    "sqlite path is a directory": ("", "", "", "target 'db'", "path", "is a directory, not a SQLite database file"),
}


@pytest.mark.parametrize("case", list(LATE_FAILURES))
def test_fields_that_used_to_fail_only_mid_backup_fail_targets_naming_file_target_and_field(tmp_path, session_keys, case):
    settings, tier, target, where, field, words = LATE_FAILURES[case]

    def fill(text: str) -> str:
        return text.replace("{tmp}", str(tmp_path)).replace("{keys}", str(session_keys))

    keys = ('recipients_file = "{keys}/age-recipient.txt"\n' if "signing_key_file" in settings
            else 'recipients_file = "{keys}/age-recipient.txt"\nsigning_key_file = "{keys}/signing.key"\n')
    targets = f'[targets.x]\nkind = "files"\npaths = ["{tmp_path}"]\n{target}'
    if case == "sqlite path is a directory":
        targets += f'[targets.db]\nkind = "sqlite"\npath = "{tmp_path}"\n'
    path = write_config(tmp_path / "targets.toml", None, settings=fill(keys + settings),
                        tiers=f'[tiers.local]\nkind = "local"\npath = "{tmp_path / "store"}"\n{tier}', targets=targets)
    done = run_cli("targets", "--json", config=path, check=2)
    err = json.loads(done.stdout)["error"]
    assert err["type"] == "ConfigError" and err["remedy"], err
    assert err["message"].startswith(f"{path}, {where}, field '{field}': "), err["message"]
    assert words in err["message"], err["message"]
    assert "Traceback" not in done.stderr


def test_a_process_that_runs_no_target_needs_no_signing_key_nor_the_targets_local_files(tmp_path, session_keys):
    """Beat, Flower and the verify worker (BACKUP_HOST naming no target's host) sign nothing and read no database."""
    path = write_config(tmp_path / "targets.toml", None,
                        settings=f'recipients_file = "{session_keys}/age-recipient.txt"\nsigning_key_file = "{tmp_path}/on-db01-only.key"\n',
                        targets=f'[targets.db]\nkind = "sqlite"\nhost = "db01"\npath = "{tmp_path}"\n')
    assert run_cli("targets", config=path, env={"BACKUP_HOST": "beat"}).returncode == 0
    assert run_cli("targets", config=path, env={"BACKUP_HOST": "db01"}).returncode == 2
