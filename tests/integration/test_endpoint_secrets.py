"""Whole harness runs (`python -m llmlib`, LoadGen) against the mock: one that echoes the API key in its
error bodies, an error header and malformed stream chunks (the key is in no file of the results folder
and nowhere on the console, while the failures it caused are counted and shown masked), and one behind
TLS with a certificate made here (verified with --trtllm_ca_file; refused without it, in one line)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.servers.tls import make_tls_files

pytestmark = [pytest.mark.loadgen, pytest.mark.timeout(240)]

REPO = Path(__file__).resolve().parents[2]
KEY = "sk-live-5ecret-7e1d2c3b4a59-never-print"


@pytest.fixture
def leaky_server():
    """The mock in its own process: echoes the key; 20% HTTP 500, 10% malformed replies."""
    proc = subprocess.Popen([sys.executable, "-m", "tests.servers.mock_openai_server", "--port", "0", "--echo_key",
                             "--fail_rate", "0.2", "--malformed_rate", "0.1", "--output_tokens", "16",
                             "--first_token_delay_ms", "2", "--per_token_delay_ms", "0.2"],
                            cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline())
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def test_an_echoed_key_is_in_no_output(tmp_path, leaky_server):
    key_file = tmp_path / "key.txt"
    key_file.write_text(KEY + "\n")
    results = tmp_path / "results"
    args = ["--benchmarks=tiny-synthetic", "--scenarios=Offline,Server", "--core_type=trtllm_endpoint",
            f"--trtllm_server_urls={leaky_server}", f"--openai_api_key_file={key_file}", f"--results_dir={results}",
            "--show_progress=false", "--warmup_queries=0", "--min_duration_ms=1000", "--server_target_qps=60",
            "--offline_expected_qps=200", "--min_query_count=200"]
    proc = subprocess.run([sys.executable, "-m", "llmlib", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=200)
    console = proc.stdout + proc.stderr
    assert proc.returncode == 1, console[-3000:]  # requests failed (the injected faults), so not 0
    files = [p for p in results.rglob("*") if p.is_file()]
    summaries = [p for p in files if p.name == "summary.json"]
    assert len(summaries) == 2 and any(p.name == "mlperf_log_detail.txt" for p in files), files
    for path in files:
        assert KEY.encode() not in path.read_bytes(), path
    assert KEY not in console
    # the echo happened and was counted: failures whose causes carry the mask where the key was
    for path in summaries:
        s = json.loads(path.read_text())
        assert s["failed"] > 0 and s["issued"] == s["completed"] + s["failed"], s
        text = json.dumps(s["errors"])
        assert "Authorization: Bearer [redacted]" in text, text[:2000]
    assert "[redacted]" in console


@pytest.fixture
def tls_server(tmp_path):
    """The mock over https in its own process, its certificate signed by a CA made here."""
    files = make_tls_files(tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "tests.servers.mock_openai_server", "--port", "0",
                             "--tls_cert", files.cert, "--tls_key", files.key, "--output_tokens", "16"],
                            cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline())
        yield f"https://127.0.0.1:{port}/v1", files
    finally:
        proc.terminate()
        proc.wait(10)


def run_harness(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llmlib", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=200)


def test_https_through_the_harness_verified_with_the_ca_file(tmp_path, tls_server):
    url, files = tls_server
    key_file = tmp_path / "key.txt"
    key_file.write_text(KEY + "\n")
    common = ["--benchmarks=tiny-synthetic", "--scenarios=Offline", "--core_type=trtllm_endpoint",
              f"--trtllm_server_urls={url}", f"--openai_api_key_file={key_file}", "--show_progress=false",
              "--warmup_queries=2", "--min_duration_ms=500", "--offline_expected_qps=200",
              "--health_check_timeout_s=5"]
    ok = run_harness(*common, f"--trtllm_ca_file={files.ca}", f"--results_dir={tmp_path / 'ok'}")
    assert ok.returncode == 0, ok.stdout[-3000:] + ok.stderr[-3000:]
    s = json.loads(next((tmp_path / "ok").rglob("summary.json")).read_text())
    assert s["failed"] == 0 and s["issued"] == s["completed"] > 0 and s["output_tokens"] == 16 * s["completed"]
    refused = run_harness(*common, f"--results_dir={tmp_path / 'refused'}")
    out = refused.stdout + refused.stderr
    assert refused.returncode != 0, out[-3000:]
    lines = [line for line in out.splitlines() if "did not verify" in line]
    assert lines and all("--trtllm_ca_file" in line and len(line) < 600 for line in lines), out[-3000:]
    assert KEY not in out
