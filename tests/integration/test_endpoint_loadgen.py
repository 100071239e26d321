"""End-to-end LoadGen Server run of `tiny-synthetic` on the `trtllm_endpoint` core against the mock
OpenAI server (a separate process on 127.0.0.1): VALID, every sample accounted for, real TTFT."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from llmlib.cli import resolve_for
from llmlib.cores import CORES
from llmlib.harness import run_scenario
from llmlib.loadgen_log import parse_detail_log, summarize

pytestmark = [pytest.mark.loadgen, pytest.mark.timeout(120)]

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def endpoint_core():
    """The core registered under its name (the registry line may not be in yet)."""
    added = "trtllm_endpoint" not in CORES
    if added:
        CORES.register("trtllm_endpoint", "llmlib.cores.trtllm_endpoint_core:TrtllmEndpointCore", extra="endpoint")
    yield
    if added:
        CORES.unregister("trtllm_endpoint")


@pytest.fixture
def mock_server():
    """The mock in its own process: 5 ms to the first token, 0.5 ms per token after it."""
    proc = subprocess.Popen([sys.executable, "-m", "tests.servers.mock_openai_server", "--port", "0",
                             "--first_token_delay_ms", "5", "--per_token_delay_ms", "0.5", "--output_tokens", "32"],
                            cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline())
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def test_server_scenario_valid_against_the_mock(tmp_path, endpoint_core, mock_server):
    cli = {"core_type": "trtllm_endpoint", "trtllm_server_urls": mock_server, "show_progress": "false",
           "warmup_queries": "2", "min_duration_ms": "1000", "server_target_qps": "80", "min_query_count": "500",
           "results_dir": str(tmp_path)}
    config, benchmark = resolve_for(cli, "tiny-synthetic", "Server", env={})
    o = run_scenario(config, benchmark, "Server")
    lg = summarize(parse_detail_log(Path(o.outdir) / "mlperf_log_detail.txt"))
    assert lg.validity == "VALID", lg.invalid_reasons
    assert o.ok and o.failed == 0 and o.lost == 0, o.errors
    assert o.issued == o.completed == lg.completed_sample_count >= 500
    # outputs are min(32, the benchmark's 64) token ids from the server
    assert o.output_tokens == 32 * o.completed
    # the run report says where output token counts came from (the server's ids here)
    assert set(o.core_stats[0]["token_sources"]) == {"token_ids"}
    assert "output tokens from  : token_ids x" in (Path(o.outdir) / "summary.txt").read_text()
    # TTFT is the first streamed chunk (5 ms in the mock), not 0; the 2 s limit holds (VALID)
    assert 4e6 <= lg.ttft_p99_ns < 2000e6
    assert 0 < lg.tpot_p99_ns < 40e6


def test_disaggregated_core_runs_through_the_router_in_its_yaml(tmp_path, mock_server):
    """The trtllm_disagg core reads the YAML and sends everything to its router (the mock here)."""
    host, port = mock_server.split(":")
    yaml_path = tmp_path / "disagg.yaml"
    yaml_path.write_text(f"hostname: {host}\nport: {port}\nbackend: pytorch\n"
                         "context_servers:\n  num_instances: 1\n  urls: [127.0.0.1:8001]\n"
                         "generation_servers:\n  num_instances: 1\n  urls: [127.0.0.1:8002]\n")
    cli = {"core_type": "trtllm_disagg", "trtllm_disagg_config_path": str(yaml_path), "show_progress": "false",
           "warmup_queries": "2", "min_duration_ms": "1000", "server_target_qps": "80", "min_query_count": "500",
           "results_dir": str(tmp_path)}
    config, benchmark = resolve_for(cli, "tiny-synthetic", "Server", env={})
    o = run_scenario(config, benchmark, "Server")
    lg = summarize(parse_detail_log(Path(o.outdir) / "mlperf_log_detail.txt"))
    assert lg.validity == "VALID", lg.invalid_reasons
    assert o.ok and o.issued == o.completed >= 500 and o.output_tokens == 32 * o.completed
    assert o.core_stats[0]["core"] == f"http://{mock_server}"


def test_server_scenario_valid_with_two_worker_processes(tmp_path, endpoint_core, mock_server):
    """--workers_per_core=2: the connections live in two worker processes; LoadGen sees the same run."""
    cli = {"core_type": "trtllm_endpoint", "trtllm_server_urls": mock_server, "show_progress": "false",
           "warmup_queries": "2", "min_duration_ms": "1000", "server_target_qps": "80", "min_query_count": "500",
           "results_dir": str(tmp_path), "workers_per_core": "2"}
    config, benchmark = resolve_for(cli, "tiny-synthetic", "Server", env={})
    o = run_scenario(config, benchmark, "Server")
    lg = summarize(parse_detail_log(Path(o.outdir) / "mlperf_log_detail.txt"))
    assert lg.validity == "VALID", lg.invalid_reasons
    assert o.ok and o.failed == 0 and o.lost == 0, o.errors
    assert o.issued == o.completed == lg.completed_sample_count >= 500
    assert o.output_tokens == 32 * o.completed
    assert o.core_stats[0]["core"] == f"http://{mock_server} (2 workers)"
    assert set(o.core_stats[0]["token_sources"]) == {"token_ids"}  # merged over the workers
    assert o.core_stats[0]["token_sources"]["token_ids"] >= o.completed
    assert 4e6 <= lg.ttft_p99_ns < 2000e6
    assert not [p for p in multiprocessing.active_children() if "-worker-" in p.name]  # all reaped


@pytest.fixture
def slow_mock_server():
    """The mock with 10 ms per token (32 tokens): ~25 requests in flight per worker at 80 QPS."""
    proc = subprocess.Popen([sys.executable, "-m", "tests.servers.mock_openai_server", "--port", "0",
                             "--first_token_delay_ms", "5", "--per_token_delay_ms", "10", "--output_tokens", "32"],
                            cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline())
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def test_a_worker_killed_mid_run_fails_only_its_own_requests(tmp_path, endpoint_core, slow_mock_server):
    cli = {"core_type": "trtllm_endpoint", "trtllm_server_urls": slow_mock_server, "show_progress": "false",
           "warmup_queries": "2", "min_duration_ms": "3000", "server_target_qps": "80", "min_query_count": "500",
           "results_dir": str(tmp_path), "workers_per_core": "2"}
    config, benchmark = resolve_for(cli, "tiny-synthetic", "Server", env={})
    killed = []

    def kill_one():
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            workers = [p for p in multiprocessing.active_children() if p.name.endswith("-worker-0")]
            if workers and list(tmp_path.glob("**/mlperf_log_detail.txt")):  # LoadGen's test has started
                time.sleep(1.5)  # into the timed run (6 s)
                os.kill(workers[0].pid, signal.SIGKILL)
                killed.append(workers[0].pid)
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_one)
    killer.start()
    o = run_scenario(config, benchmark, "Server")
    killer.join()
    assert killed
    assert not o.ok and o.lost == 0 and o.issued == o.completed + o.failed, (o.issued, o.completed, o.failed, o.errors)
    assert 0 < o.failed < 80 and o.completed > 400  # only the requests the dead worker held
    assert set(o.errors) == {"BackendError: worker process <n> exited (exit code -<n>)"}  # causes grouped
