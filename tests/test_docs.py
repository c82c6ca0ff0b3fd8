"""What the README and deploy/README promise about set-up matches what the files do.

A newcomer reads the README before running ``make test`` as root, and deploy/README
before deploying: what gets installed, and what must exist around the system, has to
be there and agree with the Makefile, the compose init scripts and the build.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
DEPLOY_README = (ROOT / "deploy" / "README.md").read_text()


def _section(text: str, start: str, end: str) -> str:
    return text[text.index(start):text.index(end, text.index(start))]


def test_the_readme_names_every_package_make_test_installs_as_root():
    installed = set()
    for line in (ROOT / "Makefile").read_text().splitlines():
        if "apt-get install -y" in line:  # what runs as root (the hint printed to other users says `sudo apt-get install`)
            words = line.split("apt-get install -y", 1)[1].split(">")[0].split()
            installed |= {w for w in words if not w.startswith("-")}
    assert {"age", "zstd", "chromium", "docker-compose", "systemd"} <= installed, installed
    set_up = _section(README, "## Set-up", "## Concepts")
    assert "as root" in set_up
    for package in installed:
        assert f"`{package}`" in set_up, f"make test installs {package} as root; the README's set-up does not say so"


def test_deploy_readme_lists_the_prerequisites_with_the_sql_the_compose_stack_runs():
    before = _section(DEPLOY_README, "## Before you start", "## With docker-compose")
    for needed in ("appendonly yes", "noeviction", "pg_dump", "pg_restore", "mariadb-dump", "age", "zstd",
                   "CREATE DATABASE backup_catalog OWNER backup_catalog"):
        assert needed in before, needed
    # The statements shown are the ones the compose stack runs (and test_deploy_files checks against the DSNs).
    postgres = (ROOT / "deploy" / "compose" / "postgres-init.sh").read_text()
    mariadb = (ROOT / "deploy" / "compose" / "mariadb-init.sh").read_text()
    shown = [line.strip() for line in before.splitlines() if re.match(r"\s*(CREATE|GRANT) ", line)]
    assert len(shown) >= 6
    for statement in shown:
        head = statement.split(" PASSWORD ")[0].split(" IDENTIFIED BY ")[0].split("  --")[0]
        assert head in postgres or head in mariadb, f"deploy/README shows {statement!r}, which the init scripts do not run"


def test_the_license_is_an_spdx_expression_and_the_build_backend_reads_it():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["license"] == "Apache-2.0"  # a table is deprecated by setuptools
    setuptools = next(r for r in project["build-system"]["requires"] if r.startswith("setuptools"))
    assert int(re.search(r">=(\d+)", setuptools).group(1)) >= 77  # the first setuptools that reads an SPDX string
