# The two commands of the README, and the pieces they are made of.
VENV ?= $(CURDIR)/.venv
PY := $(VENV)/bin/python
export GPUDOCK_VENV := $(VENV)

.PHONY: smoke-nvml soak run test test-unit fuzz venv prereqs check bench bench-quick bench-volumes bench-api bench-pulls bench-updates bench-placement bench-migration image chart-lint manifests helm-install helm-upgrade helm-uninstall dist
run: prereqs  ## local stack + agent (simulated GPUs) + examples, in the foreground
	$(PY) -m tests.stack up

test: prereqs  ## the whole suite against the real stack, on WORKERS (default 2) workers
	$(PY) -m pytest -n $(or $(WORKERS),2) --dist loadfile --no-loadscope-reorder

test-unit: venv  ## the unit tests alone: no real component, no stack (prints its time)
	@start=$$(date +%s%N); $(PY) -m pytest -m "not stack" tests/unit; rc=$$?; \
	  echo "make test-unit: $$(( ($$(date +%s%N) - start) / 1000000 )) ms"; exit $$rc

fuzz: prereqs  ## CRD-schema specs (PER_KIND, default 1000) and REST bodies, mutated, through the real API server and agent; SEED= replays
	$(PY) -m tests.fuzz --per-kind $(or $(PER_KIND),1000) --rest $(or $(REST),1000) $(if $(SEED),--seed $(SEED))

venv:  ## the venv alone (what test-unit, chart-lint, manifests and helm-* need)
	GPUDOCK_ONLY_VENV=1 bash tests/stack/install-prereqs.sh

prereqs:  ## apt packages, kube-apiserver/kubectl (cached), the venv
	bash tests/stack/install-prereqs.sh

check: prereqs  ## the static checks alone
	$(PY) -m ruff check operator tests
	$(PY) -m mypy
	$(VENV)/bin/lint-imports

smoke-nvml: venv  ## the agent against a real NVIDIA GPU, driver and toolkit (prints a report; skips without a GPU)
	@if command -v nvidia-smi >/dev/null 2>&1; then $(MAKE) prereqs; fi
	$(PY) -m tests.stack.smoke_nvml

MINUTES ?= 30
SEED ?=
NODES ?= 2
soak: prereqs  ## chaos soak: random user operations and faults, invariants checked (MINUTES=30 SEED=random NODES=2; prints figures, exits 1 on a violation)
	$(PY) -m tests.soak --minutes $(MINUTES) --nodes $(NODES) $(if $(SEED),--seed $(SEED))

bench: prereqs  ## GpuReplicaSet rollouts against docker run, the original's copy and commit (prints tables)
	$(PY) -m tests.bench.rollouts

bench-quick: prereqs  ## the same at the reduced size the suite runs
	$(PY) -m tests.bench.rollouts --quick

bench-api: prereqs  ## gpudock api: GET p50/p99 with 50 clients, POST replicaSet vs kubectl apply to Ready (prints)
	$(PY) -m tests.bench.rest_api

bench-volumes: prereqs  ## SizedVolume grow/shrink time per backend, copy vs cp -a (prints a table)
	$(PY) -m tests.bench.volume_resize

bench-pulls: prereqs  ## an image pull through the agent against docker pull, same registry (prints a table)
	$(PY) -m tests.bench.pulls

bench-updates: prereqs  ## an update after 10 MB-1 GiB of changes: pre-copy vs both copies after the stop vs the original's copy (+sync); downtime apart
	$(PY) -m tests.bench.update_downtime

bench-placement: prereqs  ## instances unpinned vs pinned by hand over 3 nodes; bind latency (prints a table)
	$(PY) -m tests.bench.placement

bench-migration: prereqs  ## a GpuMigration of a 2 GiB writable layer vs tar|socket|tar; downtime (prints a table)
	$(PY) -m tests.bench.migration

image: prereqs  ## the agent image gpudock/agent:<version> in $$DOCKER_HOST's engine (cached)
	bash image/build.sh

chart-lint: venv  ## helm lint of Chart/ (helm-python-sdk) and manifests/ against its render
	$(PY) -m tests.stack.helm_chart lint
	$(PY) -m tests.stack.helm_chart check-manifests

manifests: venv  ## render manifests/ from Chart/ with default values
	$(PY) -m tests.stack.helm_chart manifests

helm-install: venv  ## install Chart/ into $$KUBECONFIG's cluster (VALUES=file for values)
	$(PY) -m tests.stack.helm_chart install $(if $(VALUES),--values $(VALUES))

helm-upgrade: venv  ## upgrade the release (VALUES=file); apply Chart/crds/ first on a new version
	$(PY) -m tests.stack.helm_chart upgrade $(if $(VALUES),--values $(VALUES))

helm-uninstall: venv  ## remove the release; CRDs, resources and containers stay
	$(PY) -m tests.stack.helm_chart uninstall

dist: venv  ## the wheel for a user's workstation (kubectl-gpudock, gpudock) in dist/
	$(PY) -m pip wheel -q --no-deps -w dist .
