# Front door of the harness. `make help` lists the targets.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
RUN_ARGS ?=
TEST_ARGS ?=

.PHONY: help install test_servers run_harness print_config test test_quick bench_spine clean

help:  ## list the targets
	@grep -E '^[a-z_]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'
	@echo "  e.g. make run_harness RUN_ARGS=\"--benchmarks=tiny-synthetic --scenarios=Offline,Server --core_type=dummy\""
	@echo "  settings: $(PY) -m llmlib --help"

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,hf,accuracy,endpoint,triton,parquet]'
	touch $@

install: $(VENV)/.installed  ## create the virtual environment and install the package (first use)

run_harness: install  ## run LoadGen: make run_harness RUN_ARGS="--benchmarks=... --scenarios=..."
	$(PY) -m llmlib $(RUN_ARGS)

print_config: install  ## print the resolved configuration with the source of every value
	$(PY) -m llmlib --print_config $(RUN_ARGS)

test_servers: install  ## build the real servers the tests start (tritonserver via pytriton, llama-cpp-python, transformers serve)
	PYTHON=$(abspath $(PY)) bash scripts/setup_triton_server_env.sh
	PYTHON=$(abspath $(PY)) bash scripts/setup_llamacpp_server_env.sh
	PYTHON=$(abspath $(PY)) bash scripts/setup_transformers_serve_env.sh

test: install test_servers  ## run every test tier
	$(PY) -m pytest -q $(TEST_ARGS)

test_quick: install  ## the quick tier (no LoadGen end-to-end runs, no model processes)
	$(PY) -m pytest -q -m "not loadgen and not slow" $(TEST_ARGS)

bench_spine: install  ## harness overhead vs a bare LoadGen SUT (Server, zero-latency dummy core)
	$(PY) scripts/bench_spine_overhead.py $(RUN_ARGS)

clean:  ## remove run outputs
	rm -rf results/*/
