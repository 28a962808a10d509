# videochat: setup, models, tests.
#
#   make run             install, assemble weights/, calibrate, serve on http://127.0.0.1:8000
#   make run ARGS="--port 9000"
#   make test            unit tests, then browser tests in a loopback-only namespace
#   make bench | lint
#   make soak            100 connect/disconnect cycles, a 30-minute conversation, overload (~45 min)
#
# Everything installs from PyPI, npm and Debian's archive only.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
ARGS ?=

.PHONY: venv install weights calibrate run test chromium redis cluster-test bench lint soak docker-test

venv install: $(INSTALLED)

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] < (3, 11))' || \
		{ echo "error: $(PYTHON) is older than Python 3.11 (try: make PYTHON=python3.11)" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)

# Re-installs only when the lock file or pyproject.toml change.
$(INSTALLED): requirements.lock pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -r requirements.lock
	$(BIN)/python -m pip install --no-deps -e .
	# Face landmarks (FaceMesh): mediapipe declares numpy<2 but works with numpy 2;
	# its real dependencies are in requirements.lock.
	$(BIN)/python -m pip install --no-deps mediapipe==0.10.21
	touch $@

# torch's CPU build (a wheel on this kind of machine's disk: `pip install
# torch==2.13.0`; a plain `torch` would pull a multi-GB CUDA build) and the
# libraries MuseTalk and GLM-4-Voice run on, for their tests on tiny random
# models. `make test` only: the default install and `make run` stay torch-free.
TORCH_TESTS := $(VENV)/.torch-tests
$(TORCH_TESTS): $(INSTALLED)
	$(BIN)/python -m pip install -c requirements.lock torch==2.13.0 transformers==5.24.0 diffusers==0.42.1
	touch $@

# Downloads and verifies the models (seconds when they are already there).
weights: install
	$(BIN)/videochat weights

# Times every stage on this machine once (cached per CPU and model set in
# weights/calibration.json; seconds when cached) and says what it holds.
calibrate: weights
	$(BIN)/videochat calibrate

run: calibrate
	$(BIN)/videochat serve $(ARGS)

chromium:
	command -v chromium || (apt-get update && apt-get install -y chromium)

# redis-server from Debian: the cluster tests start their own on 127.0.0.1.
redis:
	command -v redis-server || (apt-get update && apt-get install -y --no-install-recommends redis-server)

test: install $(TORCH_TESTS) calibrate chromium redis
	$(BIN)/python -m pytest -m "not browser and not docker and not cluster" -q
	@unshare -n true 2>/dev/null || { \
		echo "error: 'unshare -n' is not permitted here: the browser tests must run in a" >&2; \
		echo "loopback-only network namespace. Run 'make test' as root (or in a container" >&2; \
		echo "with CAP_SYS_ADMIN), or run them by hand with 'unshare -rn' where user" >&2; \
		echo "namespaces are enabled." >&2; \
		exit 1; }
	unshare -n sh -c 'ip link set lo up && $(BIN)/python -m pytest -m browser -q'

# The cluster tests (tests/cluster/): 2-3 nodes with the fake models, each in a
# network namespace of its own, behind nginx, on one redis-server, with coturn
# relaying the media of a client namespace that reaches nothing else. As root,
# inside a fresh network namespace: nothing leaves the machine.
cluster-test: install
	command -v redis-server && command -v nginx && command -v turnserver || \
		(apt-get update && apt-get install -y --no-install-recommends redis-server nginx-light coturn iproute2)
	unshare -n sh -c 'ip link set lo up && $(BIN)/python -m pytest -m cluster -q tests/cluster'

bench: install calibrate
	$(BIN)/python -m bench

# Soak and load (bench/soak.py): writes bench/results/soak.{md,json} and the
# "Soak and load" section of docs/benchmarks.md.
soak: install calibrate
	$(BIN)/python -m bench.soak --cycles 100 --conversation-minutes 30 --turn-every-s 20 \
		--overload --docs --command "make soak"

# ruff; imports point down only (import-linter, pyproject.toml); mypy on core/,
# models/ and pipelines/.
lint: install
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/mypy

# Builds the Docker image and holds a conversation with it (docker/test.sh, as
# root where no Docker engine runs: starts dockerd, makes a Debian base with
# debootstrap). DOCKER_CA= (empty) trusts no extra CA; docs/deploy.md.
docker-test: install
	bash docker/test.sh
