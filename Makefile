# Two commands do everything: `make demo` and `make test` (see README.md).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Debian packages the toolkit needs at run or test time (installed only when running as root).
SYSTEM_PACKAGES := libusb-1.0-0 python3-venv postgresql chromium

.PHONY: demo test bench system-deps venv bytecode clean

demo: system-deps venv bytecode
	$(PY) -m coordinator.demo

test: system-deps venv bytecode
	CUSTODY_REQUIRE_POSTGRES=1 CUSTODY_REQUIRE_BROWSER=1 $(PY) -m pytest -q $(PYTEST_ARGS)

bench: venv bytecode
	@for f in bench/*.py; do echo "== $$f"; $(PY) $$f || exit 1; done

venv: $(STAMP)

# Compiled bytecode, written even where PYTHONDONTWRITEBYTECODE is set: without it every process
# recompiles what it imports (the embedded node's start-up is a benchmark figure).
bytecode: venv
	@$(PY) -m compileall -q -j 0 custody coordinator regtest audit signer-firmware >/dev/null

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	@if $(PY) -c 'import sys; sys.exit(sys.version_info < (3, 13))'; then \
	  $(PY) -m pip install --quiet --ignore-requires-python 'hwi>=3.2.0,<4'; fi
	$(PY) -m custody_signer.hwi_plugin install
	@touch $(STAMP)

system-deps:
	@missing=""; for p in $(SYSTEM_PACKAGES); do \
	  dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then \
	  echo "installing system packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	else echo "note: system packages missing ($$missing); run as root or install them to use every feature"; fi

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
