# Two commands for a newcomer: `make demo` (embedded default, nothing else needed)
# and `make test` (the whole suite, against the real services on loopback).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test tools clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

# age and zstd are the disaster-recovery tools the interop tests run; chromium screenshots
# Flower's dashboard (tests/test_flower.py) and renders the HTML DR report (tests/test_report.py),
# both saved under test-artifacts/. Debian packages.
tools:
	@command -v age >/dev/null && command -v zstd >/dev/null && command -v tar >/dev/null && command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq --no-install-recommends age zstd tar chromium >/dev/null; \
	  else echo "install the Debian packages age, zstd and chromium (sudo apt-get install age zstd chromium)"; exit 1; fi; }
	@# docker-compose checks docker-compose.yml and systemd-analyze the units, both without a daemon
	@command -v docker-compose >/dev/null && command -v systemd-analyze >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq --no-install-recommends docker-compose systemd >/dev/null; \
	  else echo "install the Debian packages docker-compose and systemd (sudo apt-get install --no-install-recommends docker-compose systemd)"; exit 1; fi; }

demo: $(VENV)/.installed
	$(PY) -m backup_tasks.demo demo

test: $(VENV)/.installed tools
	$(PY) -m pytest

clean:
	rm -rf $(VENV) demo backups
