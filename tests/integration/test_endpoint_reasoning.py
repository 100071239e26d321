"""LoadGen Server runs of the `trtllm_endpoint` core over chat against the mock with a reasoning parser's
stream (thinking in `delta.reasoning_content`, the answer in `content`): TTFT is the first thinking token,
not the first answer token, and every output token (thinking and answer) is counted and given to LoadGen,
from the server's ids or from `usage`."""

from __future__ import annotations

import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from llmlib.cli import resolve_for
from llmlib.harness import run_scenario
from llmlib.loadgen_log import parse_detail_log

pytestmark = [pytest.mark.loadgen, pytest.mark.timeout(180)]

REPO = Path(__file__).resolve().parents[2]
OUT, THINK = 32, 24  # tokens per reply; the first 24 are thinking
FIRST_MS, PER_TOKEN_MS = 5, 4  # the first answer token comes ~5 + 24 * 4 = 101 ms after the request

BENCHMARK = """\
description: tiny-synthetic's shape with prompt texts, for chat endpoints (a test benchmark)
loadgen_model: tiny-synthetic
rounds: all
dataset:
  format: pickle
  path: {path}
  input_column: tok_input
  extra_columns: [input]
total_sample_count: 64
performance_sample_count: 64
max_output_tokens: 64
min_output_tokens: 1
eos_token_id: 2
stop_token_ids: []
generation: {{do_sample: false, num_beams: 1, temperature: 0.0, top_k: 1, top_p: 1.0}}
scenarios:
  Server: {{loadgen_scenario: Server, ttft_ms: 2000, tpot_ms: 200, streaming: true}}
"""


@pytest.fixture
def chat_configs(tmp_path):
    """The project's configs plus a `chat-synthetic` benchmark whose dataset carries prompt texts."""
    configs = tmp_path / "configs"
    shutil.copytree(REPO / "configs", configs)
    frame = pd.DataFrame({"tok_input": [list(range(3 + i % 7, 20 + i % 11)) for i in range(64)],
                          "input": [f"question number {i}: what is {i} + {i}?" for i in range(64)]})
    data = tmp_path / "chat.pkl"
    with open(data, "wb") as f:
        pickle.dump(frame, f)
    (configs / "benchmarks" / "chat-synthetic.yaml").write_text(BENCHMARK.format(path=data))
    return configs


def reasoning_mock(*flags: str):
    proc = subprocess.Popen([sys.executable, "-m", "tests.servers.mock_openai_server", "--port", "0",
                             "--output_tokens", str(OUT), "--reasoning_tokens", str(THINK),
                             "--first_token_delay_ms", str(FIRST_MS), "--per_token_delay_ms", str(PER_TOKEN_MS),
                             *flags], cwd=REPO, stdout=subprocess.PIPE, text=True)
    return proc, f"127.0.0.1:{int(proc.stdout.readline())}"


@pytest.mark.parametrize("flags, source", [((), "token_ids"), (("--no_token_ids", "--reasoning_field", "reasoning"),
                                                                 "usage")])
def test_reasoning_stream_ttft_and_tokens_through_loadgen(tmp_path, chat_configs, flags, source):
    proc, url = reasoning_mock(*flags)
    try:
        cli = {"core_type": "trtllm_endpoint", "trtllm_server_urls": url, "trtllm_use_chat": "true",
               "trtllm_prompt_text_column": "input", "config_dir": str(chat_configs), "show_progress": "false",
               "warmup_queries": "2", "min_duration_ms": "1000", "server_target_qps": "40",
               "min_query_count": "120", "results_dir": str(tmp_path / "results")}
        config, benchmark = resolve_for(cli, "chat-synthetic", "Server", env={})
        o = run_scenario(config, benchmark, "Server")
    finally:
        proc.terminate()
        proc.wait(10)
    assert o.ok and o.failed == 0 and o.lost == 0 and o.issued == o.completed >= 120, o.errors
    # thinking and answer both counted, and LoadGen got that count (its TPOT is over 31 gaps of 4 ms)
    assert o.output_tokens == OUT * o.completed
    assert set(o.core_stats[0]["token_sources"]) == {source}
    detail = parse_detail_log(Path(o.outdir))
    ttft_p50 = detail["result_first_token_50.00_percentile_latency_ns"]
    tpot_p50 = detail["result_time_per_output_token_50.00_percentile_ns"]
    # TTFT is the first thinking delta (~5 ms), far from the first answer delta (~100 ms)
    assert 4e6 <= ttft_p50 < 50e6, ttft_p50
    assert 2e6 < tpot_p50 < 8e6, tpot_p50
