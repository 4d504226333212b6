# The two commands of the README, and the pieces they are made of.
VENV ?= $(CURDIR)/.venv
PY := $(VENV)/bin/python
export GPUDOCK_VENV := $(VENV)

.PHONY: run test prereqs check bench-volumes
run: prereqs  ## local stack + agent (simulated GPUs) + examples, in the foreground
	$(PY) -m tests.stack up

test: prereqs  ## the whole suite against the real stack
	$(PY) -m pytest

prereqs:  ## apt packages, kube-apiserver/kubectl (cached), the venv
	bash tests/stack/install-prereqs.sh

check: prereqs  ## the static checks alone
	$(PY) -m ruff check operator tests
	$(PY) -m mypy
	$(VENV)/bin/lint-imports

bench-volumes: prereqs  ## SizedVolume grow/shrink time per backend, copy vs cp -a (prints a table)
	$(PY) -m tests.bench.volume_resize
