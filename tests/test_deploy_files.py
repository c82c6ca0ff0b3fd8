"""The deployment files stay valid, and everything they start exists in this package.

Nothing here needs a Docker daemon or a cluster (there is none on the CI machines):

- docker-compose.yml goes through the compose-spec JSON schema (check-jsonschema) and
  Debian's ``docker-compose config``, with env files made from the committed templates;
- the systemd units go through ``systemd-analyze verify``, with the install prefix pointed
  at this test's virtualenv so that it checks the binaries they start really exist;
- the Kubernetes manifests go through the OpenAPI schemas that kubernetes-validate
  bundles, strictly (an unknown field fails).

Then every command line they run is parsed by Celery's own CLI against the installed
package (the ``-A`` app is imported, the subcommand and every option must exist, the
beat scheduler class is imported), the launcher is run with ``--print`` on the targets
file that ships beside them, and the queues the workers consume are checked to cover
every queue something publishes to. Flower is started once, configured the way the
deployments configure it, to show that its login comes from the environment and that
the HTTP enqueueing documented in deploy/README.md lands on the right queue.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import redis
import yaml

import backup_tasks.orchestration.celery_app  # noqa: F401 - imported now, before a test sets BACKUP_CONFIG: parsing never reconfigures it
from backup_tasks import config as config_mod
from backup_tasks.records import keys as keys_mod
from backup_tasks.orchestration import routing
from backup_tasks.orchestration.beat_sync import TargetsScheduler
from processes import stop_group

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
DEPLOY = ROOT / "deploy"
SYSTEMD = DEPLOY / "systemd"
K8S = DEPLOY / "k8s"
VENV_BIN = Path(sys.executable).parent
INSTALL_PREFIX = "/opt/backup-tasks/venv"  # where deploy/Dockerfile and the units install the package
SERVICE_UID = 10001                        # the backup-tasks user of the image and the pods
SECRET_NAME = re.compile(r"PASSWORD|SECRET|ACCESS_KEY|TOKEN|BASIC_AUTH|CATALOG_URL|_KEY$")

#: every queue something publishes to besides the host queues: verify, drill, maintenance
SHARED_QUEUES = {routing.VERIFY_QUEUE, routing.DRILL_QUEUE, routing.MAINTENANCE_QUEUE}


# --- reading the files ---------------------------------------------------------------

def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def env_template(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of an env-file template (comments and blank lines skipped)."""
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if line.strip() and not line.lstrip().startswith("#"))
    return {key.strip(): value for key, value in pairs}


def unit(path: Path) -> dict[str, list[tuple[str, str]]]:
    """A systemd unit as {section: [(key, value), ...]}; keys may repeat (EnvironmentFile=)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), [])
            continue
        key, _, value = line.partition("=")
        current.append((key.strip(), value.strip()))
    return sections


def unit_values(path: Path, key: str) -> list[str]:
    return [v for k, v in unit(path)["Service"] if k == key]


def k8s_documents() -> list[tuple[str, dict]]:
    return [(path.name, doc) for path in sorted(K8S.glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text()) if doc]


def deployments() -> dict[str, dict]:
    return {doc["metadata"]["name"]: doc for _, doc in k8s_documents() if doc["kind"] == "Deployment"}


# --- commands, parsed by the real CLIs -----------------------------------------------

def shell_exec(argv: list[str]) -> list[str]:
    """The command a ``sh -c '...; exec CMD'`` wrapper ends in (the guard before it is tested apart)."""
    if argv[0] in ("sh", "/bin/sh") and argv[1] == "-c":
        script = argv[2].replace("$$", "$")
        assert "exec " in script, f"a shell wrapper must exec the real command so it gets the signals: {argv}"
        return shlex.split(script.rsplit("exec ", 1)[1])
    return argv


def parse_celery(argv: list[str]) -> tuple[str, dict]:
    """Parse ``celery ...`` with Celery's own click CLI: imports the -A app, rejects unknown options.

    Returns the subcommand and its parsed parameters. For beat, the scheduler class is
    imported; for flower, every option must be one Flower defines.
    """
    from celery import Celery
    from celery.app.utils import find_app
    from celery.bin.base import CLIContext
    from celery.bin.celery import celery as celery_cli
    from celery.utils.imports import symbol_by_name

    assert Path(argv[0]).name == "celery", argv
    args = argv[1:]
    at = next(i for i, token in enumerate(args) if token in celery_cli.commands)
    ctx = celery_cli.make_context("celery", args[:at + 1])
    app = find_app(ctx.params["app"])
    assert isinstance(app, Celery), f"-A {ctx.params['app']} is not a Celery app"
    ctx.obj = CLIContext(app=app, no_color=True, workdir=None, quiet=True)
    name = args[at]
    sub = celery_cli.commands[name]
    params = sub.make_context(name, list(args[at + 1:]), parent=ctx).params
    if name == "beat":
        # -S wins over the app's beat_scheduler; what runs is whichever of the two is set.
        params["scheduler_class"] = symbol_by_name(params.get("scheduler") or app.conf.beat_scheduler)
    if name == "flower":
        from flower.options import options as flower_options

        for token in params["tornado_argv"]:
            option = token.lstrip("-").split("=", 1)[0].replace("-", "_")
            assert option in flower_options, f"flower has no option --{option}"
    return name, params


def launcher_command(argv: list[str], targets_file: Path, monkeypatch) -> list[str]:
    """Run ``python -m workers.launch ... --print`` in this process on the given targets file."""
    import importlib.util

    assert argv[:3] == ["python", "-m", "workers.launch"], argv
    assert importlib.util.find_spec("workers.launch") is not None
    from workers import launch

    monkeypatch.setenv("BACKUP_CONFIG", str(targets_file))
    monkeypatch.setenv("BACKUP_HOST", "")  # restored after the test; main() sets it to --host
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        launch.main(argv[3:] + ["--print"])
    printed = out.getvalue().split()
    at = printed.index("celery")  # "<python> -m celery -A ..."
    return ["celery", *printed[at + 1:]]


def option(argv: list[str], *names: str) -> str:
    """The raw value of an option as written (Celery expands %h in what it parses)."""
    for i, token in enumerate(argv):
        for name in names:
            if token == name:
                return argv[i + 1]
            if token.startswith(name + "="):
                return token.split("=", 1)[1]
    raise AssertionError(f"{argv} has no {'/'.join(names)}")


def worker_queues(params: dict) -> set[str]:
    queues = params["queues"]
    return set(queues.split(",") if isinstance(queues, str) else queues)


@pytest.fixture
def deploy_env(monkeypatch, tmp_path):
    """The environment a deployed process has: the env-file templates' values and fresh keys.

    The targets files name key paths inside the containers; BACKUP_RECIPIENTS_FILE and
    BACKUP_SIGNING_KEY_FILE point the ones read at load time at real keys made here.
    """
    for key, value in env_template(DEPLOY / "compose" / "backup-tasks.env.example").items():
        monkeypatch.setenv(key, value)
    keys_mod.generate(tmp_path / "keys")
    monkeypatch.setenv("BACKUP_RECIPIENTS_FILE", str(tmp_path / "keys" / keys_mod.RECIPIENT_FILE))
    monkeypatch.setenv("BACKUP_SIGNING_KEY_FILE", str(tmp_path / "keys" / keys_mod.SIGNING_KEY_FILE))
    return tmp_path / "keys"


def load_targets(path: Path, host: str | None = None) -> config_mod.Config:
    return config_mod.load(path, environ={**os.environ, "BACKUP_HOST": host or ""})


# --- docker-compose.yml --------------------------------------------------------------

def compose_project(tmp_path: Path, keys_dir: Path) -> Path:
    """A copy of the compose project as a user sets it up: env files from the templates, keys generated."""
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(COMPOSE_FILE, project / COMPOSE_FILE.name)
    shutil.copytree(DEPLOY, project / "deploy", ignore=shutil.ignore_patterns("keys", "*.env"))
    for template in (project / "deploy" / "compose").glob("*.env.example"):
        shutil.copy(template, template.with_suffix(""))
    shutil.copytree(keys_dir, project / "deploy" / "keys")
    return project


def git_ignores(path: str) -> bool:
    return subprocess.run(["git", "-C", str(ROOT), "check-ignore", "-q", "--no-index", path], timeout=30).returncode == 0


def our_services() -> dict[str, dict]:
    """The services running this package (built from deploy/Dockerfile)."""
    return {name: svc for name, svc in compose()["services"].items() if svc.get("build", {}).get("dockerfile") == "deploy/Dockerfile"}


def test_compose_file_matches_the_compose_spec_schema():
    done = subprocess.run([str(VENV_BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(COMPOSE_FILE)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_docker_compose_config_accepts_the_stack_set_up_from_the_templates(tmp_path, deploy_env):
    docker_compose = shutil.which("docker-compose")
    assert docker_compose, "install Debian's docker-compose (make tools does): it validates without a daemon"
    project = compose_project(tmp_path, deploy_env)
    done = subprocess.run([docker_compose, "-f", str(project / COMPOSE_FILE.name), "config"], capture_output=True, text=True,
                          cwd=project, timeout=120, env={k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_")})
    assert done.returncode == 0, done.stderr
    # No warning either: an unset ${VARIABLE} would be one, and would mean a secret interpolated into the file.
    assert done.stderr.strip() == "", done.stderr
    resolved = yaml.safe_load(done.stdout)
    assert set(resolved["services"]) >= {"redis", "postgres", "mariadb", "minio", "worker-db01", "worker-app01", "beat", "flower"}

    # Without the env files (a fresh checkout, before `cp *.env.example`), it says which one is missing.
    (project / "deploy" / "compose" / "flower.env").unlink()
    done = subprocess.run([docker_compose, "-f", str(project / COMPOSE_FILE.name), "config", "-q"], capture_output=True, text=True,
                          cwd=project, timeout=120)
    assert done.returncode != 0 and "flower.env" in done.stderr


def test_compose_services_have_healthchecks_volumes_and_env_files_from_templates():
    services = compose()["services"]
    for name in ("redis", "postgres", "mariadb", "minio", "worker-db01", "worker-app01", "worker-verify", "flower"):
        assert "healthcheck" in services[name], f"{name} has no healthcheck"
    for name in ("redis", "postgres", "mariadb", "minio"):
        assert any(not v.startswith(".") for v in services[name]["volumes"]), f"{name} keeps its data in no named volume"
    for name, svc in services.items():
        for env_file in svc.get("env_file", []):
            assert (ROOT / (env_file + ".example")).is_file(), f"{name}: {env_file} has no committed template {env_file}.example"
            assert git_ignores(env_file), f"{env_file} holds secrets and must be git-ignored"
    # Flower publishes on loopback only: /metrics and /healthcheck answer without auth.
    assert all(port.startswith("127.0.0.1:") for port in services["flower"]["ports"])
    assert all(port.startswith("127.0.0.1:") for port in services["minio"].get("ports", []))
    assert "ports" not in services["redis"] and "ports" not in services["postgres"]


def test_compose_holds_no_secret_inline():
    text = COMPOSE_FILE.read_text()
    # Interpolation would copy a value from the caller's shell into the resolved file (and
    # maybe onto a command line); only escaped $$ (expanded inside the container) is used.
    assert re.findall(r"(?<!\$)\$\{?[A-Za-z_]", text.replace("$$", "")) == []
    for name, svc in compose()["services"].items():
        environment = svc.get("environment", {})
        assert isinstance(environment, dict)
        for key in environment:
            assert not SECRET_NAME.search(key), f"{name}: {key} must come from an env file or a docker secret"
        command = " ".join(svc.get("command", []) if isinstance(svc.get("command"), list) else [svc.get("command") or ""])
        assert "--basic-auth" not in command and "--password" not in command, f"{name}: a secret on the command line"
        # In a shell wrapper a secret variable may fill another variable or be tested, never an argument.
        script = re.sub(r'export \w+="[^"]*"|test -n "[^"]*"', "", command.replace("$$", "$"))
        for variable in re.findall(r"\$\{?(\w+)", script):
            assert not SECRET_NAME.search(variable), f"{name}: ${variable} would put a secret on a command line"
    for template in (DEPLOY / "compose").glob("*.env.example"):
        for key, value in env_template(template).items():
            assert "CHANGE-ME" in value or not SECRET_NAME.search(key), f"{template.name}: {key} must be a placeholder"


def test_compose_bind_mounts_exist_and_keys_are_what_backupctl_generates():
    assert git_ignores("deploy/keys/signing.key"), "deploy/keys/ holds private keys and must be git-ignored"
    generated = {keys_mod.IDENTITY_FILE, keys_mod.RECIPIENT_FILE, keys_mod.SIGNING_KEY_FILE, keys_mod.SIGNING_PUB_FILE}
    data = compose()
    sources = [v.split(":")[0] for svc in data["services"].values() for v in svc.get("volumes", []) if v.startswith("./")]
    sources += [s["file"] for s in data["secrets"].values()]
    assert sources
    for source in sources:
        path = Path(source)
        if path.parts[:2] == (".", "deploy") and path.parent.name == "keys" or path.parts[:2] == ("deploy", "keys"):
            assert path.name in generated, f"{source}: backupctl keys generate writes {sorted(generated)}"
        else:
            assert (ROOT / path).exists(), f"{source} is mounted but not in the repository"
    # the init scripts: postgres runs an executable one; mariadb's must be sourced (its helper is a shell function)
    assert os.access(DEPLOY / "compose" / "postgres-init.sh", os.X_OK)
    assert not os.access(DEPLOY / "compose" / "mariadb-init.sh", os.X_OK)


def test_compose_targets_file_loads_and_names_the_paths_compose_mounts(deploy_env):
    path = DEPLOY / "targets.compose.toml"
    cfg = load_targets(path)
    assert {t.kind for t in cfg.targets.values()} >= {"postgres", "mysql", "files"}
    offsite = cfg.tiers["offsite"]
    assert offsite.kind == "s3" and offsite.credentials == "env:BACKUP_S3" and offsite.options["endpoint_url"] == "http://minio:9000"
    # Every tier opens with the credentials of the env template (construction only, no I/O).
    from backup_tasks.ops.runtime import Runtime

    rt = Runtime(cfg)
    for tier in cfg.tiers.values():
        assert rt.storage(tier) is not None
    # Each worker host loads with only its own targets' credentials resolving.
    hosts = {t.host for t in cfg.targets.values()}
    assert hosts == {"db01", "app01"}
    for host in hosts:
        assert load_targets(path, host).settings.host == host

    # The paths the targets file names are where compose puts things.
    written = tomllib.loads(path.read_text())["settings"]
    recipients_file, signing_key_file = written["recipients_file"], written["signing_key_file"]
    for name, svc in our_services().items():
        mounts = {v.split(":")[1]: v.split(":")[0] for v in svc.get("volumes", []) if ":" in v}
        env = svc["environment"]
        assert mounts.get(env["BACKUP_CONFIG"]) == "./deploy/targets.compose.toml", name
        assert recipients_file in mounts, f"{name} cannot read the recipients file the targets file names"
        secrets = {f"/run/secrets/{s}" for s in svc.get("secrets", [])}
        assert (str(cfg.settings.identities_file) in secrets) == (name == "worker-verify"), \
            f"{name}: only the verify worker holds the age identity"
        if name.startswith("worker-"):
            assert str(cfg.settings.staging_dir) in mounts and cfg.tiers["local"].path in mounts, name
        if name in ("worker-db01", "worker-app01"):
            assert signing_key_file in secrets, f"{name} signs manifests and needs the signing key"
            assert env["BACKUP_HOST"] in hosts
        else:
            assert env["BACKUP_HOST"] not in hosts, f"{name} owns no target and needs no database password"


def test_compose_init_scripts_create_the_users_the_targets_file_logs_in_as(deploy_env):
    """The sample databases' roles match the DSNs, and their passwords come from the env template."""
    cfg = load_targets(DEPLOY / "targets.compose.toml")
    postgres = (DEPLOY / "compose" / "postgres-init.sh").read_text()
    mariadb = (DEPLOY / "compose" / "mariadb-init.sh").read_text()
    env = env_template(DEPLOY / "compose" / "backup-tasks.env.example")
    from urllib.parse import urlsplit

    logins = {(t.kind, urlsplit(t.dsn).username, t.password) for t in cfg.targets.values() if t.dsn}
    logins |= {("postgres", urlsplit(t.drill["server"]).username, t.drill["password"]) for t in cfg.targets.values() if t.drill}
    catalog = urlsplit(env["BACKUP_CATALOG_URL"])
    assert catalog.hostname == "postgres" and catalog.password
    assert f"CREATE ROLE {catalog.username} LOGIN PASSWORD '$catalog_password'" in postgres
    for kind, user, password_ref in logins:
        variable = password_ref.removeprefix("env:")
        assert variable in env, f"{variable} is missing from backup-tasks.env.example"
        if kind == "postgres":
            assert re.search(rf"CREATE ROLE {user} LOGIN.* PASSWORD '\${variable}'", postgres), user
        else:
            assert f"CREATE USER '{user}'@'%' IDENTIFIED BY '${variable}'" in mariadb, user
    for dbname in {urlsplit(t.dsn).path.strip("/") for t in cfg.targets.values() if t.dsn}:
        assert f"CREATE DATABASE {dbname}" in postgres or f"CREATE DATABASE IF NOT EXISTS {dbname}" in mariadb
    assert subprocess.run(["sh", "-n", str(DEPLOY / "compose" / "postgres-init.sh")], timeout=30).returncode == 0
    assert subprocess.run(["sh", "-n", str(DEPLOY / "compose" / "mariadb-init.sh")], timeout=30).returncode == 0


def test_compose_commands_exist_and_every_published_queue_has_a_worker(deploy_env, monkeypatch):
    cfg = load_targets(DEPLOY / "targets.compose.toml")
    published = {t.queue for t in cfg.targets.values()} | SHARED_QUEUES
    consumed: set[str] = set()
    subcommands = {}
    for name, svc in our_services().items():
        argv = svc["command"]
        if argv[:3] == ["python", "-m", "workers.launch"]:
            argv = launcher_command(argv, DEPLOY / "targets.compose.toml", monkeypatch)
            host = svc["environment"]["BACKUP_HOST"]
            assert option(svc["command"], "--host") == host
            sub, params = parse_celery(argv)
            # the launcher gives a host worker its own chains and maintenance; verify stays with the identity holder
            assert worker_queues(params) == {routing.host_queue(host), routing.MAINTENANCE_QUEUE}, (name, params["queues"])
        else:
            sub, params = parse_celery(shell_exec(argv))
        subcommands[name] = sub
        if sub == "worker":
            consumed |= worker_queues(params)
            node = option(argv, "-n", "--hostname").replace("%h", svc["hostname"])
            check = shlex.split(svc["healthcheck"]["test"][1].replace("$$", "$")
                                .replace("${BACKUP_HOST}", svc["environment"]["BACKUP_HOST"]).replace("${HOSTNAME}", svc["hostname"]))
            ping, ping_params = parse_celery(check)
            assert (ping, ping_params["command"]) == ("inspect", "ping")
            assert ping_params["destination"] == [node], f"{name}: the healthcheck pings {ping_params['destination']}, the worker is {node}"
        if sub == "beat":
            assert params["scheduler_class"] is TargetsScheduler, f"{name}: beat must run the app's scheduler"
    assert consumed == published, f"queues nobody consumes: {published - consumed}; consumed but never published: {consumed - published}"
    assert sorted(subcommands.values()) == ["beat", "flower", "worker", "worker", "worker"]


# --- Flower, configured as every deployment configures it ----------------------------

def flower_guard(script: str, env: dict) -> subprocess.CompletedProcess:
    """Run a deployment's Flower guard (the part before `exec`) with the given environment."""
    guard = script.replace("$$", "$").rsplit("exec ", 1)[0] + "\nexit 0"
    return subprocess.run(["/bin/sh", "-c", guard], env={"PATH": os.environ["PATH"], **env}, capture_output=True, text=True, timeout=30)


def test_every_flower_refuses_to_start_without_a_login():
    compose_script = compose()["services"]["flower"]["command"][2]
    k8s_script = deployments()["backup-flower"]["spec"]["template"]["spec"]["containers"][0]["command"][2]
    systemd_script = shlex.split(unit_values(SYSTEMD / "backup-flower.service", "ExecStartPre")[0].replace("$$", "$"))[2]
    for script in (compose_script, k8s_script, systemd_script):
        refused = flower_guard(script, {})
        assert refused.returncode != 0 and "FLOWER_BASIC_AUTH" in refused.stderr
        assert flower_guard(script, {"FLOWER_BASIC_AUTH": "ops:pw"}).returncode == 0
        assert flower_guard(script, {"FLOWER_AUTH": r".*@example\.org"}).returncode == 0


def _get(url: str, auth: tuple[str, str] | None = None, data: bytes | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(":".join(auth).encode()).decode())
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_flower_takes_its_login_from_the_environment_and_enqueues_over_http(tmp_path, session_keys, redis_url):
    """What deploy/README.md promises about Flower, against a real Flower and Redis."""
    from databases import free_port

    from conftest import write_config

    targets = write_config(tmp_path / "targets.toml", session_keys, settings=f'broker_url = "{redis_url}"\n', targets=(
        '[targets.school-db]\nkind = "postgres"\nhost = "db01"\ndsn = "postgresql://backup@db01:5432/school"\n'
        'password = "env:SCHOOL_DB_PASSWORD"\n'))
    port, password = free_port(), "s3cret-" + os.urandom(6).hex()
    env = {**os.environ, "BACKUP_CONFIG": str(targets), "BACKUP_HOST": "flower", "FLOWER_BASIC_AUTH": f"ops:{password}"}
    env.pop("SCHOOL_DB_PASSWORD", None)  # Flower routes target names; it never needs a database password
    proc = subprocess.Popen([str(VENV_BIN / "celery"), "-A", "backup_tasks.celery_app", "flower", "--address=127.0.0.1",
                             f"--port={port}"], env=env, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "flower.log", "wb"),
                            start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (tmp_path / "flower.log").read_text()
            with contextlib.suppress(OSError):
                if _get(f"{base}/healthcheck")[0] == 200:
                    break
            assert time.monotonic() < deadline, "Flower did not answer /healthcheck in 60 s"
            time.sleep(0.2)
        assert password not in Path(f"/proc/{proc.pid}/cmdline").read_bytes().decode(errors="replace")

        assert _get(f"{base}/api/tasks")[0] == 401
        assert _get(f"{base}/api/tasks", auth=("ops", "wrong"))[0] == 401
        assert _get(f"{base}/api/tasks", auth=("ops", password))[0] == 200
        # The caveat deploy/README.md documents: these two answer without any login.
        assert _get(f"{base}/metrics")[0] == 200
        assert _get(f"{base}/healthcheck")[0] == 200

        # Enqueueing for a non-Python application: the chain's start lands on the target's host queue.
        status, body = _get(f"{base}/api/task/async-apply/backup.start", auth=("ops", password),
                            data=json.dumps({"args": ["school-db"]}).encode())
        assert status == 200, body
        task_id = json.loads(body)["task-id"]
        queued = redis.Redis.from_url(redis_url).lrange("host.db01", 0, -1)
        assert len(queued) == 1
        message = json.loads(queued[0])
        assert message["headers"]["task"] == "backup.start" and message["headers"]["id"] == task_id
        assert json.loads(base64.b64decode(message["body"]))[0] == ["school-db"]
    finally:
        stop_group(proc)


# --- systemd -------------------------------------------------------------------------

UNITS = ("backup-worker@.service", "backup-verify.service", "backup-beat.service", "backup-flower.service")
WORKER_UNITS = UNITS[:2]
HARDENING = {
    "User": "backup-tasks", "Group": "backup-tasks", "ProtectSystem": "strict", "PrivateTmp": "yes",
    "NoNewPrivileges": "yes", "CapabilityBoundingSet": "", "UMask": "0077", "Restart": "on-failure",
}


def test_systemd_analyze_verifies_the_units(tmp_path):
    """systemd-analyze verify runs here (no systemd as PID 1 is needed for it).

    The units start /opt/backup-tasks/venv/bin/...; the copies verified here start the
    same commands from this test's virtualenv, so a command that does not exist fails.
    """
    analyze = shutil.which("systemd-analyze")
    assert analyze, "install Debian's systemd package (make tools does) for systemd-analyze"
    for name in UNITS:
        (tmp_path / name).write_text((SYSTEMD / name).read_text().replace(INSTALL_PREFIX, str(VENV_BIN.parent)))
    (tmp_path / "backup-worker@db01.service").symlink_to(tmp_path / "backup-worker@.service")
    assert len(UNITS) == len(list(SYSTEMD.glob("*.service")))
    done = subprocess.run([analyze, "verify", *(str(tmp_path / n) for n in ("backup-worker@db01.service", *UNITS[1:]))],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stderr.strip() == "", done.stderr

    # And it does catch what it should: a misspelt key, a command that is not installed.
    (tmp_path / "backup-beat.service").write_text((tmp_path / "backup-beat.service").read_text()
                                                  .replace("ProtectSystem=", "ProtectSytem=").replace("/bin/celery", "/bin/celeryy"))
    done = subprocess.run([analyze, "verify", str(tmp_path / "backup-beat.service")], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "ProtectSytem" in done.stderr and "celeryy" in done.stderr


def test_systemd_units_are_hardened_and_start_real_commands(deploy_env, monkeypatch):
    for name in UNITS:
        service = dict(unit(SYSTEMD / name)["Service"])
        for key, expected in HARDENING.items():
            assert service.get(key) == expected, f"{name}: {key}={service.get(key)!r}, expected {expected!r}"
        assert service.get("ProtectHome") in ("yes", "read-only"), name
        assert service.get("ReadWritePaths"), name
        assert "/etc/backup-tasks/backup-tasks.env" in unit_values(SYSTEMD / name, "EnvironmentFile"), name
        assert "BACKUP_CONFIG=/etc/backup-tasks/targets.toml" in unit_values(SYSTEMD / name, "Environment"), name
        assert unit(SYSTEMD / name)["Install"] == [("WantedBy", "multi-user.target")]
        # catalog and S3 keys only where work is done: beat and Flower never read them
        assert ("/etc/backup-tasks/worker.env" in unit_values(SYSTEMD / name, "EnvironmentFile")) == (name in WORKER_UNITS), name

    for name in WORKER_UNITS:
        worker = dict(unit(SYSTEMD / name)["Service"])
        # Warm shutdown: SIGTERM to the main process only, then a long wait before SIGKILL.
        assert worker["KillMode"] == "mixed" and worker["KillSignal"] == "SIGTERM", name
        assert re.fullmatch(r"(\d+)min", worker["TimeoutStopSec"]) and int(worker["TimeoutStopSec"][:-3]) >= 10, name
        # Staging and catalog, and the local tier, are writable; the rest of the system is not.
        assert set(worker["ReadWritePaths"].split()) == {"/var/lib/backup-tasks", "/var/backups/backup-tasks"}, name
    assert "-/etc/backup-tasks/%i.env" in unit_values(SYSTEMD / "backup-worker@.service", "EnvironmentFile")
    worker = dict(unit(SYSTEMD / "backup-worker@.service")["Service"])

    # ExecStart: the launcher for host %i yields a worker on that host's queue; beat and Flower parse.
    argv = shlex.split(worker["ExecStart"].replace("%i", "db01"))
    assert argv[0] == f"{INSTALL_PREFIX}/bin/python"
    sub, params = parse_celery(launcher_command(["python", *argv[1:]], DEPLOY / "targets.compose.toml", monkeypatch))
    assert sub == "worker" and routing.host_queue("db01") in worker_queues(params)
    assert option(launcher_command(["python", *argv[1:]], DEPLOY / "targets.compose.toml", monkeypatch), "-n") == "db01@%h"
    # The verify unit: %% is systemd's escape, so Celery gets verify@%h.
    verify = shlex.split(dict(unit(SYSTEMD / "backup-verify.service")["Service"])["ExecStart"].replace("%%", "%"))
    assert verify[0] == f"{INSTALL_PREFIX}/bin/celery" and option(verify, "-n") == "verify@%h"
    assert worker_queues(parse_celery(verify)[1]) == {routing.VERIFY_QUEUE, routing.DRILL_QUEUE, routing.MAINTENANCE_QUEUE}
    assert "BACKUP_HOST=verify" in unit_values(SYSTEMD / "backup-verify.service", "Environment")
    beat = shlex.split(dict(unit(SYSTEMD / "backup-beat.service")["Service"])["ExecStart"])
    assert beat[0] == f"{INSTALL_PREFIX}/bin/celery"
    assert parse_celery(beat)[1]["scheduler_class"] is TargetsScheduler
    flower = shlex.split(dict(unit(SYSTEMD / "backup-flower.service")["Service"])["ExecStart"])
    assert parse_celery(flower)[0] == "flower" and "--address=127.0.0.1" in flower  # loopback, behind a proxy
    assert "/etc/backup-tasks/flower.env" in unit_values(SYSTEMD / "backup-flower.service", "EnvironmentFile")


def test_systemd_env_templates_hold_placeholders_only():
    for template in SYSTEMD.glob("*.env.example"):
        values = env_template(template)
        assert values, template
        for key, value in values.items():
            assert "CHANGE-ME" in value or not SECRET_NAME.search(key), f"{template.name}: {key}"
    assert "FLOWER_BASIC_AUTH" in env_template(SYSTEMD / "flower.env.example")


# --- Kubernetes ----------------------------------------------------------------------

def test_k8s_manifests_match_the_kubernetes_schemas_strictly():
    import kubernetes_validate

    version = kubernetes_validate.latest_version()
    kinds = set()
    for file, doc in k8s_documents():
        if doc["kind"] == "Kustomization":
            continue
        kubernetes_validate.validate(doc, version, strict=True)
        kinds.add(doc["kind"])
    assert kinds >= {"Deployment", "Service", "ConfigMap", "Secret", "PersistentVolumeClaim", "NetworkPolicy"}
    # and strict means strict: a misspelt field is refused
    broken = yaml.safe_load((K8S / "beat.yaml").read_text())
    broken["spec"]["template"]["spec"]["containers"][0]["comand"] = broken["spec"]["template"]["spec"]["containers"][0].pop("command")
    with pytest.raises(kubernetes_validate.ValidationError, match="comand"):
        kubernetes_validate.validate(broken, version, strict=True)


def test_k8s_kustomization_applies_every_manifest_but_the_example_secrets():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    manifests = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == manifests - {"secrets.example.yaml"}


def test_k8s_pods_are_locked_down_and_sized():
    for name, deployment in deployments().items():
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == SERVICE_UID
        assert pod["securityContext"]["fsGroup"] == SERVICE_UID
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        assert pod["automountServiceAccountToken"] is False
        assert deployment["spec"]["selector"]["matchLabels"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True and context["allowPrivilegeEscalation"] is False, name
            assert context["capabilities"]["drop"] == ["ALL"], name
            assert set(container["resources"]) == {"requests", "limits"}, name
            assert {"cpu", "memory"} <= set(container["resources"]["requests"]) and {"cpu", "memory"} <= set(container["resources"]["limits"])
            assert any(m["mountPath"] == "/tmp" for m in container["volumeMounts"]), f"{name}: read-only root needs a /tmp volume"
            for var in container.get("env", []):
                assert "value" not in var or not SECRET_NAME.search(var["name"]), f"{name}: {var['name']} inline"


def test_k8s_beat_and_host_workers_run_exactly_one_replica():
    found = deployments()
    assert found["backup-beat"]["spec"]["replicas"] == 1
    assert found["backup-beat"]["spec"]["strategy"]["type"] == "Recreate"
    for name in ("backup-worker-db01", "backup-worker-app01"):
        # a chain's stages share this pod's staging volume
        assert found[name]["spec"]["replicas"] == 1 and found[name]["spec"]["strategy"]["type"] == "Recreate"


def test_k8s_every_reference_names_something_declared():
    documents = k8s_documents()
    secrets = {doc["metadata"]["name"]: set(doc.get("stringData", {})) | set(doc.get("data", {}))
               for _, doc in documents if doc["kind"] == "Secret"}
    config_maps = {doc["metadata"]["name"] for _, doc in documents if doc["kind"] == "ConfigMap"}
    claims = {doc["metadata"]["name"] for _, doc in documents if doc["kind"] == "PersistentVolumeClaim"}
    for _, doc in documents:
        if doc["kind"] == "Kustomization":
            assert doc["namespace"] == "backup-tasks"
            continue
        assert doc["metadata"].get("namespace", "backup-tasks") == "backup-tasks"
        if doc["kind"] == "Secret":
            assert all("CHANGE-ME" in v for v in doc["stringData"].values()), f"{doc['metadata']['name']}: placeholders only"
    used_secrets = set()
    for name, deployment in deployments().items():
        pod = deployment["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        for container in pod["containers"]:
            for var in container.get("env", []):
                ref = var.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["key"] in secrets.get(ref["name"], ()), f"{name}: secret {ref['name']}/{ref['key']} is declared nowhere"
                    used_secrets.add(ref["name"])
            for source in container.get("envFrom", []):
                assert source["secretRef"]["name"] in secrets, name
                used_secrets.add(source["secretRef"]["name"])
            for mount in container["volumeMounts"]:
                assert mount["name"] in volumes, f"{name}: mount of undeclared volume {mount['name']}"
        for volume in volumes.values():
            if "secret" in volume:
                declared = secrets.get(volume["secret"]["secretName"])
                assert declared is not None, f"{name}: secret {volume['secret']['secretName']} is declared nowhere"
                assert {item["key"] for item in volume["secret"].get("items", [])} <= declared
                used_secrets.add(volume["secret"]["secretName"])
            if "configMap" in volume:
                assert volume["configMap"]["name"] in config_maps
            if "persistentVolumeClaim" in volume:
                claim = volume["persistentVolumeClaim"]
                # a read-only claim is the application's own data (files targets); ours are declared here
                assert claim["claimName"] in claims or claim.get("readOnly") is True, f"{name}: claim {claim['claimName']}"
    assert used_secrets == set(secrets), f"declared but unused: {set(secrets) - used_secrets}"
    # The Flower Service reaches the Flower pod's named port.
    service = next(doc for _, doc in documents if doc["kind"] == "Service")
    flower = deployments()["backup-flower"]["spec"]["template"]
    assert service["spec"]["selector"].items() <= flower["metadata"]["labels"].items()
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"][0]["targetPort"] in {p["name"] for p in flower["spec"]["containers"][0]["ports"]}


def test_k8s_targets_file_loads_and_the_pods_run_real_commands(deploy_env, monkeypatch, tmp_path):
    config_map = next(doc for _, doc in k8s_documents() if doc["kind"] == "ConfigMap")
    targets = tmp_path / "targets.toml"
    targets.write_text(config_map["data"]["targets.toml"])
    cfg = load_targets(targets)
    published = {t.queue for t in cfg.targets.values()} | SHARED_QUEUES
    consumed: set[str] = set()
    for name, deployment in deployments().items():
        pod = deployment["spec"]["template"]["spec"]
        container = pod["containers"][0]
        env = {v["name"]: v.get("value") for v in container.get("env", [])}
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        config_dir = str(Path(env["BACKUP_CONFIG"]).parent)
        assert config_dir in mounts, f"{name}: the targets file is mounted as a directory so edits reach the pod"
        assert str(cfg.settings.identities_file.parent) in mounts or name != "backup-worker-verify"
        argv = container["command"]
        if argv[:3] == ["python", "-m", "workers.launch"]:
            # the secrets the pod gets are exactly what its host's targets reference
            host_refs = {t.password.removeprefix("env:") for t in cfg.targets.values() if t.host == env["BACKUP_HOST"] and t.password}
            assert {k for k, v in env.items() if v is None} == host_refs, name
            argv = launcher_command(argv, targets, monkeypatch)
        sub, params = parse_celery(shell_exec(argv))
        if sub == "worker":
            consumed |= worker_queues(params)
            probe = shell_exec(container["livenessProbe"]["exec"]["command"])
            ping, ping_params = parse_celery(probe)
            assert (ping, ping_params["command"]) == ("inspect", "ping")
            assert ping_params["destination"] == [option(argv, "-n", "--hostname").replace("%h", "$HOSTNAME")], name
            assert pod["terminationGracePeriodSeconds"] >= 600, f"{name}: room for a warm shutdown"
        if sub == "beat":
            assert params["scheduler_class"] is TargetsScheduler, f"{name}: beat must run the app's scheduler"
    assert consumed == published, f"queues nobody consumes: {published - consumed}"


# --- beat, as every deployment starts it ------------------------------------------

def deployed_beat_commands() -> dict[str, list[str]]:
    """The beat command line of each deployment, exactly as written there."""
    systemd = shlex.split(dict(unit(SYSTEMD / "backup-beat.service")["Service"])["ExecStart"])
    return {"docker-compose.yml": compose()["services"]["beat"]["command"],
            "deploy/systemd/backup-beat.service": systemd,
            "deploy/k8s/beat.yaml": deployments()["backup-beat"]["spec"]["template"]["spec"]["containers"][0]["command"]}


def test_deployed_beat_follows_the_targets_file_it_started_with(tmp_path, session_keys, redis_url):
    """The beat command of the deploy files, run for real: a target added to the file later gets published.

    Only the app's scheduler follows the file; a deployment that names another one with
    -S would keep the schedule it started with until restarted.
    """
    from conftest import write_config
    from distributed import Process, wait_for

    commands = deployed_beat_commands()
    argv = commands["docker-compose.yml"]
    for source, command in commands.items():
        assert Path(command[0]).name == "celery" and command[1:] == argv[1:], f"{source} starts beat differently: {command}"
    fast = "beat_lock_timeout = 4\nbeat_max_loop_interval = 1\n"

    def targets(*names: str) -> str:
        return "".join(f'[targets.{n}]\nkind = "files"\nhost = "{n}"\npaths = ["{tmp_path}"]\nschedule = "@every 2s"\n'
                       for n in names)

    cfg = write_config(tmp_path / "targets.toml", session_keys, settings=fast, targets=targets("first"))
    env = {**os.environ, "BACKUP_CONFIG": str(cfg), "BACKUP_BROKER_URL": redis_url, "BACKUP_HOST": "beat"}
    beat = Process([str(VENV_BIN / "celery"), *argv[1:]], tmp_path / "beat.log", env)
    try:
        queued = redis.Redis.from_url(redis_url)
        wait_for(lambda: queued.llen(routing.host_queue("first")) > 0, 30, f"beat to publish the first target:\n{beat.text()[-3000:]}")
        write_config(tmp_path / "targets.toml", session_keys, settings=fast, targets=targets("first", "added"))
        wait_for(lambda: queued.llen(routing.host_queue("added")) > 0, 20,
                 f"beat to publish the target added after it started:\n{beat.text()[-3000:]}")
        message = json.loads(queued.lindex(routing.host_queue("added"), 0))
        assert message["headers"]["task"] == "backup.start" and message["headers"]["argsrepr"] == "['added', 'full']"
        assert re.search(r"schedule synced from .*added: backup:added", beat.text())
    finally:
        beat.stop()


# --- the image ----------------------------------------------------------------------

def test_dockerfile_copies_what_exists_and_installs_the_tools_the_sources_run():
    text = (DEPLOY / "Dockerfile").read_text()
    for line in text.splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
    # pg_dump/pg_restore, mariadb-dump/mariadb, and the disaster-recovery tools of the README runbook
    for package in ("postgresql-client", "mariadb-client", "age", "zstd", "tar"):
        assert re.search(rf"\s{re.escape(package)}(\s|$)", text), package
    assert f"python -m venv {INSTALL_PREFIX}" in text and f"--uid {SERVICE_UID}" in text and f"USER {SERVICE_UID}:{SERVICE_UID}" in text
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert "deploy/keys" in ignored and "deploy/compose/*.env" in ignored  # no key or secret in the build context
