# Front door of the harness. `make help` lists the targets.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
RUN_ARGS ?=
TEST_ARGS ?=
EVAL_ARGS ?=

.PHONY: help install test_servers run_harness print_config evaluate generate_engines run_llm_server generate_disagg_config run_audit_harness stage_submission check_submission test test_quick bench_spine bench_workers report compare clean

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

evaluate: install  ## score a log another harness wrote: make evaluate EVAL_ARGS="--benchmark B --log L --dataset D --tokenizer T"
	$(PY) -m llmlib.evaluation $(EVAL_ARGS)

generate_engines: install  ## quantize and build TensorRT-LLM engines: make generate_engines RUN_ARGS="--benchmarks=... [--dry_run]"
	$(PY) -m llmlib.ops generate_engines $(RUN_ARGS)

run_llm_server: install  ## start the serving processes (MLPERF_DISAGG_LAUNCH_TYPE=worker|leader under mpirun: disaggregated)
	$(PY) -m llmlib.ops run_llm_server $(RUN_ARGS)

generate_disagg_config: install  ## write the disaggregated-serving YAML at --trtllm_disagg_config_path
	$(PY) -m llmlib.ops generate_disagg_config $(RUN_ARGS)

run_audit_harness: install  ## compliance runs + verdicts: RUN_ARGS="--benchmarks=... --scenarios=... --audit_tests=TEST06 --mlperf_inference_dir=..."
	$(PY) -m llmlib.compliance $(RUN_ARGS)

stage_submission: install  ## lay out finished runs as the MLPerf submission tree (--submission_dir)
	$(PY) -m llmlib.compliance.submission stage $(RUN_ARGS)

check_submission: install  ## run the official submission checker on --submission_dir and show its verdict
	$(PY) -m llmlib.compliance.submission check $(RUN_ARGS)

test_servers: install  ## build the real servers the tests start (tritonserver via pytriton, llama-cpp-python, transformers serve, OpenMPI), chromium
	PYTHON=$(abspath $(PY)) bash scripts/setup_triton_server_env.sh
	PYTHON=$(abspath $(PY)) bash scripts/setup_llamacpp_server_env.sh
	PYTHON=$(abspath $(PY)) bash scripts/setup_transformers_serve_env.sh
	bash scripts/setup_openmpi.sh
	bash scripts/setup_chromium.sh

test: install test_servers  ## run every test tier
	$(PY) -m pytest -q $(TEST_ARGS)

test_quick: install  ## the quick tier (no LoadGen end-to-end runs, no model processes)
	$(PY) -m pytest -q -m "not loadgen and not slow" $(TEST_ARGS)

bench_spine: install  ## harness overhead vs a bare LoadGen SUT (Server, zero-latency dummy core)
	$(PY) scripts/bench_spine_overhead.py $(RUN_ARGS)

bench_workers: install  ## streamed tokens/s, client CPU per chunk and added TTFT with --workers_per_core (RUN_ARGS="--workers=0,1,2,4,8,12 --mock_processes=4" on 16 cores)
	$(PY) scripts/bench_worker_scaling.py $(RUN_ARGS)

RESULTS ?= results
report: install  ## rebuild plots, report.html per run and index.html: make report RESULTS=results/...
	$(PY) -m llmlib.report build $(RESULTS)

compare: install  ## deltas between two result folders: make compare A=results_a B=results_b [OUT=folder]
	$(PY) -m llmlib.report compare $(A) $(B) $(OUT)

clean:  ## remove run outputs
	rm -rf results/*/
