# Outrider: `make demo` runs the example pipeline end to end; `make test` runs the whole suite.
# Both create the virtual environment and install everything they need first.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-fast lint bench bench-placement bench-keeper bench-store bench-scale protos check-protos sysdeps clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,examples]'
	touch $(STAMP)

install: $(STAMP)

# System packages the tests use: systemd-analyze (unit-file checks); openssl (the s_client
# tests of tests/integration/test_tls_handshake.py); chromium (tests/integration/test_dashboard.py
# drives it headless); postgresql (its initdb and pg_ctl: the store and engine tests start a
# throwaway server, tests/helpers/pgserver.py); slurm-wlm and munge (a real single-node Slurm for
# tests/integration/test_slurm.py, as root); ip, tc (iproute2) and nft (nftables) for the fault
# suite's network lab (tests/faults, which needs root: without it those tests skip, so nothing is
# installed for them either).
sysdeps:
	@command -v systemd-analyze >/dev/null 2>&1 || { \
	  echo "installing systemd (for systemd-analyze)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd >/dev/null; }
	@command -v openssl >/dev/null 2>&1 || { \
	  echo "installing openssl (for the openssl s_client tests)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl >/dev/null; }
	@command -v promtool >/dev/null 2>&1 || { \
	  echo "installing prometheus (its promtool checks /metrics and the alert rules: tests/integration/test_metrics.py)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing chromium (the dashboard test drives it headless: tests/integration/test_dashboard.py)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
	  echo "installing postgresql (the store tests run on PostgreSQL too: tests/helpers/pgserver.py)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; }
	@{ command -v slurmctld >/dev/null 2>&1 || test -x /usr/sbin/slurmctld; } && \
	  { command -v munged >/dev/null 2>&1 || test -x /usr/sbin/munged; } || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing slurm-wlm munge (tests/integration/test_slurm.py runs a real single-node Slurm)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null; \
	  else echo "not root: tests/integration/test_slurm.py will skip (its Slurm needs root, and slurm-wlm munge)"; fi; }
	@missing=""; \
	command -v ip >/dev/null 2>&1 && command -v tc >/dev/null 2>&1 || missing=" iproute2"; \
	command -v nft >/dev/null 2>&1 || missing="$$missing nftables"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing$$missing (for the fault suite's network lab)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "not root: tests/faults will skip (it needs root, and$$missing)"; fi; \
	fi

demo: install
	$(PY) examples/demo.py

test: install sysdeps lint
	$(PY) scripts/gen_protos.py --check
	$(PY) -m pytest -q

# Lint, format check and type check of our own code (generated stubs excluded; see pyproject.toml).
LINTED := outrider scheduler agent
lint: install
	$(PY) -m ruff check $(LINTED)
	$(PY) -m ruff format --check $(LINTED)
	$(PY) -m mypy

test-fast: install
	$(PY) -m pytest -q -m "not slow"

bench: install
	$(PY) bench/core.py

bench-placement: install
	$(PY) bench/placement.py

bench-keeper: install
	$(PY) bench/keeper.py

bench-store: install
	$(PY) bench/store.py

bench-failover: install
	$(PY) bench/failover.py

# 100, 500 and 2000 agents against one scheduler, SQLite and PostgreSQL (bench/scale.py --help).
bench-scale: install
	$(PY) bench/scale.py

protos: install
	$(PY) scripts/gen_protos.py

check-protos: install
	$(PY) scripts/gen_protos.py --check

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
