"""End-to-end LoadGen runs of the `tiny-synthetic` benchmark on the dummy core (seconds each).

They check VALID results, the logged sample counts, the summary, and the exactly-once ledger
under injected faults (failing requests, a backend that never answers).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from llmlib.cli import resolve_for
from llmlib.cores import CORES
from llmlib.cores.base import LLMCore
from llmlib.cores.dummy import DummyCore
from llmlib.harness import run_scenario
from llmlib.loadgen_log import parse_detail_log, summarize

pytestmark = pytest.mark.loadgen

REPO = Path(__file__).resolve().parents[2]

FAST = {
    "core_type": "dummy", "show_progress": "false", "warmup_queries": "2",
    "dummy_ttft_ms": "5", "dummy_tpot_ms": "0.5", "dummy_max_batch_size": "32",
    "min_duration_ms": "600", "offline_expected_qps": "1500",
    "server_target_qps": "500", "min_query_count": "500",
}


def run(tmp_path, scenario, **overrides):
    cli = dict(FAST, results_dir=str(tmp_path), **{k: str(v) for k, v in overrides.items()})
    config, benchmark = resolve_for(cli, "tiny-synthetic", scenario, env={})
    return run_scenario(config, benchmark, scenario)


def logged(outcome):
    return summarize(parse_detail_log(Path(outcome.outdir) / "mlperf_log_detail.txt"))


def test_offline_valid_and_counts_match_loadgen(tmp_path):
    o = run(tmp_path, "Offline")
    lg = logged(o)
    assert lg.validity == "VALID", lg.invalid_reasons
    assert o.ok and o.failed == 0 and o.lost == 0
    assert o.issued == o.completed == lg.completed_sample_count
    assert o.issued >= 900  # 1500 QPS x 0.6 s (LoadGen adds a margin)
    assert lg.result_tokens_per_second and lg.result_tokens_per_second > 0
    out = Path(o.outdir)
    assert out == tmp_path / "local" / "tiny-synthetic" / "Offline" / "performance"
    summary = (out / "summary.txt").read_text()
    assert "VALID" in summary and f"issued {o.issued} = completed {o.completed} + failed 0" in summary
    assert json.loads((out / "summary.json").read_text())["ok"] is True
    rows = {r["name"]: r for r in json.loads((out / "config.json").read_text())}
    assert rows["offline_expected_qps"]["value"] == 1500.0
    assert rows["offline_expected_qps"]["source"] == "command line"


def test_server_valid_with_token_latencies(tmp_path):
    o = run(tmp_path, "Server")
    lg = logged(o)
    assert lg.validity == "VALID", lg.invalid_reasons
    assert o.issued == o.completed == lg.completed_sample_count >= 500
    # FirstTokenComplete was sent: TTFT is the simulated 5 ms prefill, not 0 or the whole latency
    assert 4e6 <= lg.ttft_p99_ns < 200e6
    assert 0 < lg.tpot_p99_ns < 40e6
    assert lg.ttft_limit_ns == 2000e6 and lg.tpot_limit_ns == 200e6


def test_interactive_uses_interactive_key_and_limits(tmp_path):
    o = run(tmp_path, "Interactive")
    lg = logged(o)
    assert lg.validity == "VALID", lg.invalid_reasons
    assert lg.ttft_limit_ns == 450e6 and lg.tpot_limit_ns == 40e6
    assert Path(o.outdir).parts[-2:] == ("Interactive", "performance")
    assert o.issued == o.completed == lg.completed_sample_count


def test_one_token_and_empty_outputs_keep_tpot_defined(tmp_path):
    o = run(tmp_path, "Server", dummy_output_len=1, server_target_qps=300, min_query_count=300)
    lg = logged(o)
    assert o.short_outputs == o.completed == o.issued
    # n_tokens is the true count (1); LoadGen's TPOT for it is -(final - first token): about 0
    assert lg.tpot_p99_ns is not None and -1e6 < lg.tpot_p99_ns < 40e6
    o = run(tmp_path, "Server", dummy_output_len=0, server_target_qps=300, min_query_count=300)
    assert o.ok and o.short_outputs == o.issued and o.output_tokens == 0
    assert -1e6 < logged(o).tpot_p99_ns < 40e6


def test_failures_are_counted_not_lost(tmp_path):
    o = run(tmp_path, "Server", dummy_fail_rate=0.1, dummy_seed=3)
    assert o.issued == o.completed + o.failed and o.lost == 0
    assert 0.05 * o.issued < o.failed < 0.15 * o.issued
    assert not o.ok
    assert sum(o.errors.values()) == o.failed
    assert any("injected failure" in cause for cause in o.errors)
    text = (Path(o.outdir) / "summary.txt").read_text()
    assert f"failed {o.failed}" in text and "RUN FAILED" in text
    assert logged(o).completed_sample_count == o.issued  # LoadGen got a response for every one


@pytest.mark.parametrize("warmup_queries", [0, 2])
def test_each_core_warms_up_before_the_timed_run_with_or_without_warmup_queries(tmp_path, monkeypatch,
                                                                               warmup_queries):
    calls = []
    monkeypatch.setattr(DummyCore, "warm_up", lambda core: calls.append(core.rank))
    run(tmp_path, "Offline", dummy_num_cores=2, warmup_queries=warmup_queries, min_duration_ms=100)
    assert sorted(calls) == [0, 1]


def test_offline_failures_counted(tmp_path):
    o = run(tmp_path, "Offline", dummy_fail_rate=0.1)
    assert o.issued == o.completed + o.failed and o.failed > 0 and o.lost == 0


class _SilentCore(LLMCore):
    """A backend that accepts requests and never answers them, except every other one."""

    name = "silent_test"

    def _enqueue_impl(self, requests):
        for req in requests:
            if req.sample_index % 2 == 0:
                tokens = __import__("numpy").arange(1, 5, dtype="uint32")
                if req.streaming:
                    self._first_token(req.request_id, tokens)
                self._complete(req.request_id, tokens, 4)

    def health_check(self):
        pass

    def cancel(self, request_id, reason=""):  # a broken cancel: the server must fail the request itself
        pass


@pytest.fixture
def silent_core():
    CORES.register("silent_test", _SilentCore)
    yield
    CORES.unregister("silent_test")


def test_backend_that_never_answers_cannot_hang_the_run(tmp_path, silent_core):
    done = threading.Event()
    result = {}

    def go():
        result["o"] = run(tmp_path, "Server", core_type="silent_test", warmup_queries=0,
                          request_timeout_s=0.3, server_target_qps=200, min_query_count=100,
                          min_duration_ms=300)
        done.set()

    t = threading.Thread(target=go, daemon=True)
    t.start()
    assert done.wait(60), "the run hung"
    o = result["o"]
    assert o.issued == o.completed + o.failed and o.lost == 0
    assert o.failed > 0 and o.timed_out == o.failed
    assert any("timed out" in cause for cause in o.errors)


def test_accuracy_mode_logs_every_sample(tmp_path):
    o = run(tmp_path, "Offline", test_mode="AccuracyOnly")
    assert o.ok and o.issued == 256 == o.completed
    acc = json.loads((Path(o.outdir) / "mlperf_log_accuracy.json").read_text())
    assert len(acc) == 256
    assert {e["qsl_idx"] for e in acc} == set(range(256))
    assert all(len(e["data"]) > 0 for e in acc)  # hex of the uint32 token ids
    assert Path(o.outdir).name == "accuracy"
    assert 8 <= o.tokens_per_sample <= 64


def test_cli_runs_each_scenario_and_prints_the_ledger(tmp_path):
    args = [f"--{k}={v}" for k, v in FAST.items()] + [
        "--benchmarks=tiny-synthetic", "--scenarios=Offline,Server", f"--results_dir={tmp_path}"]
    proc = subprocess.run([sys.executable, "-m", "llmlib", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = proc.stdout.split("=" * 72)[-1]
    assert table.count("VALID") == 2 and "[ok]" in table
    for scenario in ("Offline", "Server"):
        assert (tmp_path / "local" / "tiny-synthetic" / scenario / "performance" / "mlperf_log_detail.txt").is_file()
        detail = (tmp_path / "local" / "tiny-synthetic" / scenario / "performance" / "mlperf_log_detail.txt").read_text()
        assert "Multiple conf files" not in detail


def test_cli_exit_code_reports_failures(tmp_path):
    args = [f"--{k}={v}" for k, v in FAST.items()] + [
        "--benchmarks=tiny-synthetic", "--scenarios=Server", f"--results_dir={tmp_path}", "--dummy_fail_rate=0.1"]
    proc = subprocess.run([sys.executable, "-m", "llmlib", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 1
    assert "RUN FAILED" in proc.stdout and "issued" in proc.stdout
