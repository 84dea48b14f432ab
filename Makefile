# embedstream: `make run` indexes the sample corpus and searches it; `make test` proves it.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell sha256sum pyproject.toml | cut -c1-12)
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install run test test-unit verify-matrix lint bench bench-gpu bench-chunking bench-langchain kafka-jars kafka clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@rm -f $(VENV)/.installed-* && touch $@

run: install
	$(VENV)/bin/embedstream index examples/corpus
	$(VENV)/bin/embedstream search "my door sensor battery drains too fast" -k 3
	$(VENV)/bin/embedstream search "how do consumer groups rebalance partitions" -k 3

kafka-jars:
	@bash ops/kafka/fetch.sh

test: install kafka-jars lint
	$(PY) -m pytest -q

# Every crash point x every next change x every source (also part of make test).
verify-matrix: install
	$(PY) -m pytest -q tests/integration/test_crash_matrix.py

test-unit: install
	$(PY) -m pytest -q tests/unit

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check pipeline connectors
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-logo  # the layer rule: [tool.importlinter] in pyproject.toml

bench: install kafka-jars
	$(PY) ops/bench/run.py

# Chunk size x overlap on the Debian manual pages: model time, tokens, nDCG@10, MRR@10.
bench-chunking: install
	$(PY) ops/bench/chunking.py

# First index side by side with LangChain's index() (needs the [bench] extra or its --target dir).
bench-langchain: install
	$(PY) ops/bench/langchain_compare.py

# Encoder tokens/s: raw encode vs the pipeline encoder (CUDA when visible, else CPU).
bench-gpu: install
	$(PY) ops/bench/gpu.py

kafka: kafka-jars
	$(PY) ops/kafka/broker.py --libs .cache/kafka/libs --work .cache/kafka/run --port 9092

clean:
	rm -rf .embedstream .cache/kafka/run
