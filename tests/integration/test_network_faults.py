"""Faults of the network backends, through a whole LoadGen run: every run ends (no hang), every
issued sample is counted as completed or failed, and the failures name their cause.

The OpenAI-compatible mock runs as its own process (tests.servers.mock_openai_server) and the Triton
server is the real tritonserver of tests/servers/triton.py."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from llmlib.cli import resolve_for
from llmlib.harness import run_scenario
from tests.servers.triton import TritonServer

pytestmark = [pytest.mark.loadgen, pytest.mark.slow, pytest.mark.timeout(180)]

REPO = Path(__file__).resolve().parents[2]
#: a short Server run: LoadGen issues about target_qps x min_duration queries
RUN = {"show_progress": "false", "warmup_queries": "0", "server_target_qps": "40", "min_query_count": "120",
       "min_duration_ms": "3000", "request_timeout_s": "30"}


def run(tmp_path, **cli):
    config, benchmark = resolve_for({**RUN, "results_dir": str(tmp_path), **cli}, "tiny-synthetic", "Server", env={})
    return run_scenario(config, benchmark, "Server")


def accounted(o) -> None:
    assert o.lost == 0 and o.issued == o.completed + o.failed, (o.issued, o.completed, o.failed)


class MockProcess:
    """tests.servers.mock_openai_server in its own process; `kill()` is a crash (SIGKILL)."""

    def __init__(self, *flags: str):
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.servers.mock_openai_server", "--port", "0", *flags],
                                     cwd=REPO, stdout=subprocess.PIPE, text=True)
        self.url = f"127.0.0.1:{int(self.proc.stdout.readline())}"

    def kill(self) -> None:
        self.proc.kill()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.proc.kill()
        self.proc.wait(10)


def kill_after_completions(server: TritonServer, n: int, timeout_s: float = 60.0) -> threading.Thread:
    """Kill the Triton server once its models report `n` successful inferences (Triton's statistics, polled
    every 20 ms), or after timeout_s: not at a fixed time, since the core's start-up may take a second on a
    loaded machine, and a kill before any completion would show nothing completed."""
    import tritonclient.grpc as grpcclient

    def watch() -> None:
        deadline = time.monotonic() + timeout_s
        with grpcclient.InferenceServerClient(server.url) as client:
            while time.monotonic() < deadline:
                stats = client.get_inference_statistics(as_json=True).get("model_stats", [])
                if sum(int(m.get("inference_stats", {}).get("success", {}).get("count", 0)) for m in stats) >= n:
                    break
                time.sleep(0.02)
        server.kill()

    thread = threading.Thread(target=watch, name="kill-after-completions", daemon=True)
    thread.start()
    return thread


# --- OpenAI-compatible endpoint -----------------------------------------------------------------------
def test_http_500_malformed_sse_and_dropped_connections_are_counted(tmp_path):
    with MockProcess("--output_tokens", "16", "--per_token_delay_ms", "1", "--fail_rate", "0.05",
                     "--malformed_rate", "0.05", "--drop_rate", "0.05", "--seed", "7") as mock:
        o = run(tmp_path, core_type="trtllm_endpoint", trtllm_server_urls=mock.url)
    accounted(o)
    assert o.issued >= 120 and 0 < o.failed < o.issued / 2 and not o.ok
    causes = " | ".join(o.error_examples.values())
    assert "HTTP 500" in causes and "malformed SSE" in causes and "connection dropped" in causes, causes
    assert len(o.errors) <= 6, o.errors  # grouped by shape, not one group per request id


def test_endpoint_down_at_start_ends_the_run_with_a_clear_message(tmp_path):
    with MockProcess() as mock:
        url = mock.url
    o = run(tmp_path, core_type="trtllm_endpoint", trtllm_server_urls=url, health_check_timeout_s="2")
    assert o.run_error and f"http://{url}" in o.run_error and "not reachable" in o.run_error
    assert o.issued == 0 and not o.ok


def test_endpoint_killed_mid_run_fails_the_rest(tmp_path):
    # the server dies once 30 requests completed (not at a fixed time: the core's start-up may take a
    # second on a loaded machine, and a kill before any completion would show nothing completed)
    with MockProcess("--output_tokens", "16", "--per_token_delay_ms", "2", "--crash_after", "30") as mock:
        o = run(tmp_path, core_type="trtllm_endpoint", trtllm_server_urls=mock.url)
    accounted(o)
    assert o.completed > 0 and o.failed > 0
    assert any("connection" in cause for cause in o.errors), o.errors


# --- Triton gRPC -----------------------------------------------------------------------------------------
TRITON = {"core_type": "triton_grpc", "triton_model_name": "tensorrt_llm"}


def test_triton_down_at_start_ends_the_run_with_a_clear_message(tmp_path):
    o = run(tmp_path, **TRITON, triton_server_urls="127.0.0.1:9", health_check_timeout_s="2")
    assert o.run_error and "grpc://127.0.0.1:9/tensorrt_llm" in o.run_error and "health check failed" in o.run_error
    assert o.issued == 0 and not o.ok


def test_triton_killed_mid_run_fails_the_rest_as_unavailable(tmp_path):
    with TritonServer(output_tokens=8, per_token_delay_ms=2) as server:
        watcher = kill_after_completions(server, 30)
        o = run(tmp_path, **TRITON, triton_server_urls=server.url)
        watcher.join()
    accounted(o)
    assert o.completed > 0 and o.failed > 0
    # each failure names gRPC's status, including requests sent as a fresh stream met the dead server
    assert all("gRPC stream failed: StatusCode.UNAVAILABLE" in cause for cause in o.errors), o.errors
