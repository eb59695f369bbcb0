# rt-appliance: every developer and CI command starts here.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: serve test lint install node-deps binary release soak bench fuzz e2e clean

# Two installs: the runtime alone (make serve) and, on top, what the tests, linters and the
# fuzz tier need (make test and the other developer targets).
RUNTIME := $(VENV)/.runtime
$(RUNTIME): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e .
	touch $(RUNTIME)

$(STAMP): $(RUNTIME) fuzz/requirements.txt
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test]'
	$(PY) -m pip install --quiet -r fuzz/requirements.txt   # atheris, for the fuzz tier
	touch $(STAMP)

install: $(STAMP)

# Node packages used by the tests as real browser-side clients (socket.io-client, yjs).
node-deps: tests/node/package.json
	cd tests/node && npm ci --no-audit --no-fund --loglevel=error

serve: $(RUNTIME)
	$(PY) appliance.py serve $(ARGS)

# ruff (lint and import order) and mypy (strict on core/, engine/ and backends/)
lint: $(STAMP)
	$(VENV)/bin/ruff check rt tests fuzz bench soak packaging appliance.py
	$(VENV)/bin/mypy

test: $(STAMP) lint
	@if command -v npm >/dev/null 2>&1 && [ -f tests/node/package-lock.json ]; then $(MAKE) --no-print-directory node-deps; fi
	$(PY) -m pytest $(PYTEST_ARGS)

# End-to-end tier (tests/e2e/README.md): unmodified open-webui 0.12.4 (its own cached venv),
# redis-server, nginx and two appliance nodes, in Debian's headless Chromium; every flow
# against open-webui alone, then through the appliance. Needs the Debian packages
# redis-server, nginx(-light), chromium, nodejs, npm. One flow in one mode:
#   make e2e PYTEST_ARGS="-k 'alone and chat_stream'"
e2e: $(STAMP)
	PYTHON=$(PYTHON) bash tests/e2e/install_openwebui.sh >/dev/null
	@if command -v npm >/dev/null 2>&1 && [ -f tests/node/package-lock.json ]; then $(MAKE) --no-print-directory node-deps; fi
	$(PY) -m pytest -m e2e tests/e2e $(PYTEST_ARGS)

# A bounded long run (5 min, 1000 clients with churn) that checks everything returns to its
# baseline afterwards; SOAK_ARGS="--seconds 60 --clients 300" for a shorter one.
SOAK_ARGS ?= --minutes 5 --clients 1000
soak: $(STAMP)
	$(PY) soak/soak.py $(SOAK_ARGS)

# Benchmark against python-socketio+uvicorn and Node socket.io 4.8 on ws and on uWebSockets.js
# (bench/README.md; bench/peers/package.json holds the uWebSockets.js peer's packages);
# BENCH_ARGS=--quick for a run of about two minutes. Then CPU per acked event with the
# batching fixed (bench/per_message.py, under two minutes), the cost of connection state
# recovery, on and off, one node and Redis (bench/recovery.py, about two minutes), the
# join of 0.5-32 MB documents with the pause another client sees (bench/documents.py), and
# the CPU one event costs each process of [server] workers = 2 (bench/worker_bus.py).
bench: $(STAMP)
	@if command -v npm >/dev/null 2>&1 && [ -f tests/node/package-lock.json ]; then $(MAKE) --no-print-directory node-deps; fi
	@if command -v npm >/dev/null 2>&1; then cd bench/peers && npm ci --no-audit --no-fund --loglevel=error; fi
	$(PY) -m pip install --quiet -c constraints.txt -r bench/requirements.txt
	$(PY) bench/run.py $(BENCH_ARGS)
	$(PY) bench/per_message.py $(PER_MESSAGE_BENCH_ARGS)
	$(PY) bench/recovery.py $(RECOVERY_BENCH_ARGS)
	$(PY) bench/documents.py $(DOCUMENTS_BENCH_ARGS)
	$(PY) bench/worker_bus.py $(WORKER_BUS_BENCH_ARGS)
	$(PY) bench/pubsub.py $(PUBSUB_BENCH_ARGS)
	$(PY) bench/pubsub.py --clients 1 --messages 4000 --rate 2000 --rounds 5 --name tokens

# Coverage-guided fuzzing (atheris) of every harness in fuzz/, FUZZ_SECONDS each (default 20).
fuzz: $(STAMP)
	PYTHON=$(PY) bash fuzz/run.sh

# One-file executable for glibc 2.28+ (packaging/build.sh: PyInstaller in a cached Debian 11
# root with its own CPython), then its smoke tests: dist/rt-appliance-<version>-linux-<ARCH>
# and its .sha256 (amd64: also dist/rt-appliance). ARCH=arm64 builds under qemu-user;
# SOURCE_REV=HEAD builds the last commit instead of the working tree.
ARCH ?= amd64
binary:
	ARCH=$(ARCH) PYTHON=$(PYTHON) SOURCE_REV=$(SOURCE_REV) bash packaging/build.sh

# Both release binaries and their SHA-256 files in dist/.
release:
	$(MAKE) --no-print-directory binary ARCH=amd64
	$(MAKE) --no-print-directory binary ARCH=arm64

clean:
	rm -rf $(VENV) build dist *.egg-info tests/node/node_modules
