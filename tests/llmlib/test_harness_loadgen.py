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
    # the verdict tells the truth whatever LoadGen computed, and throughput counts completed samples
    assert o.verdict == "FAILED" and text.startswith(f"=== tiny-synthetic | Server") and "Result              : FAILED" in text
    assert "VALID" not in text.split("LoadGen computed")[0]
    assert "completed samples only" in text
    data = json.loads((Path(o.outdir) / "summary.json").read_text())
    lg_sps = data["loadgen"]["result_samples_per_second"]
    assert data["verdict"] == "FAILED"
    assert data["completed_samples_per_second"] == pytest.approx(lg_sps * o.completed / o.issued)
    errors = (Path(o.outdir) / "errors.txt").read_text().splitlines()
    assert len(errors) == o.failed and all("injected failure" in line for line in errors)
    assert {int(line.split("\t")[0]) for line in errors} <= set(range(256))  # dataset sample indices


@pytest.mark.parametrize("warmup_queries", [0, 2])
def test_each_core_warms_up_before_the_timed_run_with_or_without_warmup_queries(tmp_path, monkeypatch,
                                                                               warmup_queries):
    calls = []
    monkeypatch.setattr(DummyCore, "warm_up", lambda core: calls.append(core.rank))
    run(tmp_path, "Offline", dummy_num_cores=2, warmup_queries=warmup_queries, min_duration_ms=100)
    assert sorted(calls) == [0, 1]


def test_a_core_failing_every_request_ends_the_run_early(tmp_path):
    o = run(tmp_path, "Offline", dummy_fail_rate=1.0, max_consecutive_failures=20, warmup_queries=0)
    assert o.verdict == "FAILED" and "failed its last 20 requests in a row" in o.run_error
    assert o.issued == o.completed + o.failed and o.lost == 0


def test_derived_request_timeout_and_stall_warning_are_recorded_with_their_source(tmp_path):
    o = run(tmp_path, "Server")
    rows = {r["name"]: r for r in json.loads((Path(o.outdir) / "config.json").read_text())}
    # tiny-synthetic Server: TTFT 2 s, TPOT 200 ms, 64 tokens: 3 x (2 + 64 x 0.2) = 44.4 s
    assert rows["request_timeout_s"] == {"name": "request_timeout_s", "value": 44.4,
                                         "source": "derived from the scenario's limits"}
    assert rows["stall_warning_s"]["value"] == 10.0
    o = run(tmp_path, "Offline", request_timeout_s=5)
    rows = {r["name"]: r for r in json.loads((Path(o.outdir) / "config.json").read_text())}
    assert rows["request_timeout_s"]["value"] == 5.0 and rows["request_timeout_s"]["source"] == "command line"
    assert rows["stall_warning_s"]["value"] == 0.0


def test_a_dataset_error_leaves_no_results_folder(tmp_path, monkeypatch):
    from llmlib import harness
    from llmlib.errors import DatasetError

    def broken(benchmark):
        raise DatasetError("datasets/x.pkl: no such file")

    monkeypatch.setattr(harness, "load_benchmark_dataset", broken)
    with pytest.raises(DatasetError):
        run(tmp_path, "Offline")
    assert not (tmp_path / "local").exists()


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
    # Scored once, by the benchmark's evaluator: the checker's accuracy.txt and the project's JSON.
    txt = (Path(o.outdir) / "accuracy.txt").read_text()
    assert "'tokens_per_sample': " in txt and "'gen_num': 256" in txt
    assert json.loads((Path(o.outdir) / "accuracy.json").read_text())["evaluator"] == "rouge"


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


# -- SingleStream, the Interactive name, rounds, per-mode benchmarks --------------------------------


def test_single_stream_is_valid_on_the_dummy_core_with_p90_latencies(tmp_path):
    o = run(tmp_path, "SingleStream", dummy_ttft_ms=1, dummy_tpot_ms=0.05, min_duration_ms=400,
            min_query_count=100, single_stream_expected_latency_ns=1_000_000)
    lg = summarize(parse_detail_log(Path(o.outdir) / "mlperf_log_detail.txt"), "SingleStream")
    assert lg.validity == "VALID", lg.invalid_reasons
    assert o.ok and o.issued == o.completed == lg.completed_sample_count >= 100
    detail = parse_detail_log(Path(o.outdir))
    assert detail["effective_scenario"] == "SingleStream"
    assert detail["effective_target_latency_percentile"] == 0.9  # mlperf.conf: *.SingleStream p90
    assert detail["requested_single_stream_expected_latency_ns"] == 1_000_000  # the quick-run flag
    # FirstTokenComplete was sent: TTFT is the simulated 1 ms prefill, under the whole latency
    assert 0.5e6 <= lg.ttft_p90_ns < lg.latency_p90_ns and 0 < lg.tpot_p90_ns < 5e6
    saved = json.loads((Path(o.outdir) / "summary.json").read_text())
    assert saved["scenario"] == "SingleStream" and saved["loadgen"]["latency_p90_ns"] == lg.latency_p90_ns
    text = (Path(o.outdir) / "summary.txt").read_text()
    assert f"latency p90         : {lg.latency_p90_ns / 1e6:>11,.2f} ms   (the SingleStream result)" in text
    assert "TTFT p90" in text and "TPOT p90" in text and "target QPS" not in text
    assert Path(o.outdir).parts[-2:] == ("SingleStream", "performance")


def test_an_interactive_run_is_interactive_in_its_summary_although_loadgen_logs_server(tmp_path):
    o = run(tmp_path, "Interactive")
    out = Path(o.outdir)
    assert parse_detail_log(out)["effective_scenario"] == "Server"  # what LoadGen writes
    saved = json.loads((out / "summary.json").read_text())
    assert saved["scenario"] == "Interactive"
    assert saved["loadgen"]["scenario"] == "Interactive" and saved["loadgen"]["loadgen_scenario"] == "Server"
    assert (out / "summary.txt").read_text().startswith("=== tiny-synthetic | Interactive | PerformanceOnly |")
    from llmlib.loadgen_log import run_scenario_of

    assert run_scenario_of(out / "mlperf_log_detail.txt") == "Interactive"


@pytest.fixture
def config_dir_v50(tmp_path):
    """A config folder whose only benchmark belongs to v5.0 alone."""
    folder = tmp_path / "configs"
    (folder / "benchmarks").mkdir(parents=True)
    text = (REPO / "configs" / "benchmarks" / "tiny-synthetic.yaml").read_text()
    assert "rounds: all" in text
    (folder / "benchmarks" / "old.yaml").write_text(text.replace("rounds: all", "rounds: [v5.0]"))
    (folder / "user.conf").write_text((REPO / "configs" / "user.conf").read_text().replace("tiny-synthetic", "old"))
    return folder


def test_a_benchmark_outside_the_round_runs_with_a_warning(tmp_path, config_dir_v50, caplog):
    cli = dict(FAST, results_dir=str(tmp_path), config_dir=str(config_dir_v50))
    config, benchmark = resolve_for(cli, "old", "Offline", env={})
    assert config.round == "v6.1"
    with caplog.at_level("WARNING", logger="llmlib.harness"):
        o = run_scenario(config, benchmark, "Offline")
    warning = "benchmark old is not part of MLPerf Inference v6.1 (--round): it belongs to v5.0; running it anyway"
    assert o.round_warning == warning and warning in caplog.text
    assert o.ok and logged(o).validity == "VALID"  # a warning, not an error
    assert f"WARNING             : {warning}" in (Path(o.outdir) / "summary.txt").read_text()
    config, benchmark = resolve_for(dict(cli, round="v5.0"), "old", "Offline", env={})
    assert run_scenario(config, benchmark, "Offline").round_warning is None


def test_accuracy_mode_uses_the_benchmarks_accuracy_set_and_limits(tmp_path):
    folder = tmp_path / "configs"
    (folder / "benchmarks").mkdir(parents=True)
    text = (REPO / "configs" / "benchmarks" / "tiny-synthetic.yaml").read_text()
    text += ("accuracy_sample_count: 40\n"
             "test_modes:\n"
             "  AccuracyOnly:\n"
             "    dataset: {num_samples: 48, seed: 5}\n"
             "    total_sample_count: 48\n"
             "    performance_sample_count: 48\n"
             "    max_output_tokens: 12\n")
    text = text.replace("loadgen_model: tiny-synthetic", "loadgen_model: modes")
    (folder / "benchmarks" / "modes.yaml").write_text(text)
    cli = dict(FAST, results_dir=str(tmp_path), config_dir=str(folder), test_mode="AccuracyOnly")
    config, benchmark = resolve_for(cli, "modes", "Offline", env={})
    o = run_scenario(config, benchmark, "Offline")
    assert o.ok and o.issued == o.completed == 40  # of the 48 in the accuracy set
    detail = parse_detail_log(Path(o.outdir))
    assert detail["effective_accuracy_sample_count"] == 40  # from the benchmark: no conf file has the key
    assert detail["qsl_reported_total_count"] == 48
    acc = json.loads((Path(o.outdir) / "mlperf_log_accuracy.json").read_text())
    assert len({e["qsl_idx"] for e in acc}) == 40 and max(e["qsl_idx"] for e in acc) < 48
    assert max(len(e["data"]) // 8 for e in acc) == 12  # uint32 tokens as hex, capped at the accuracy limit
    config, benchmark = resolve_for(dict(cli, test_mode="PerformanceOnly"), "modes", "Offline", env={})
    o = run_scenario(config, benchmark, "Offline")
    assert o.ok and o.issued >= 256 and parse_detail_log(Path(o.outdir))["qsl_reported_total_count"] == 256


@pytest.mark.slow
@pytest.mark.parametrize("name, mode, count", [("tiny-gpt-oss-120b", "AccuracyOnly", 32),
                                               ("tiny-deepseek-r1", "AccuracyOnly", 40)])
def test_stand_in_accuracy_runs_on_the_dummy_core_replay_the_references(tmp_path, name, mode, count):
    cli = dict(FAST, results_dir=str(tmp_path), test_mode=mode)
    config, benchmark = resolve_for(cli, name, "Offline", env={})
    o = run_scenario(config, benchmark, "Offline")
    assert o.ok and o.issued == o.completed == count
    assert o.accuracy["metrics"]["exact_token_match"] == 100.0  # outputs are the stand-in's references
    assert o.accuracy["metrics"]["gen_num"] == count


@pytest.mark.slow
def test_llama3_1_8b_edge_stand_in_runs_single_stream_valid_on_the_dummy_core(tmp_path):
    cli = dict(FAST, results_dir=str(tmp_path), dummy_ttft_ms=1, dummy_tpot_ms=0.05, min_duration_ms=400,
               min_query_count=100, single_stream_expected_latency_ns=1_000_000)
    config, benchmark = resolve_for(cli, "tiny-llama3.1-8b-edge", "SingleStream", env={})
    o = run_scenario(config, benchmark, "SingleStream")
    lg = logged(o)
    assert lg.validity == "VALID", lg.invalid_reasons
    assert o.ok and o.issued == o.completed >= 100 and lg.scenario == "SingleStream"
    assert Path(o.outdir).parts[-3:] == ("tiny-llama3.1-8b-edge", "SingleStream", "performance")


def test_a_hard_exit_holds_loadgens_issue_thread_so_issued_and_outcomes_are_read_together():
    """CI once saw issued 11 = completed 9 + failed 1 after a dead hf worker ended a run: the summary was
    read while LoadGen's thread had counted a sample as issued and not yet had its refusal counted.
    hold_intake waits for the call in progress (False if it does not return in time), then holds the next
    one, uncounted, until the process exits."""
    import numpy as np

    from llmlib.generation import GenerationParams
    from llmlib.harness import LoadgenSUT

    entered, release = threading.Event(), threading.Event()

    class BlockingServer:  # a submit still in progress on LoadGen's thread
        def submit_one(self, req, target):
            entered.set()
            release.wait(5)

    sut = LoadgenSUT(BlockingServer(), None, [np.array([1, 2], dtype=np.int32)], gen=GenerationParams(max_new_tokens=4),
                     streaming=True)
    first = threading.Thread(target=sut.issue_queries, args=([7], [0]))
    first.start()
    assert entered.wait(5)
    assert sut.hold_intake(0.05) is False  # the issue call is still in progress
    release.set()
    first.join(5)
    assert sut.hold_intake(1.0) is True
    late = threading.Thread(target=sut.issue_queries, args=([8], [0]), daemon=True)
    late.start()
    late.join(0.2)
    assert late.is_alive() and sut.issued == 1  # LoadGen's next call waits, not counted
    sut._issuing.release()  # (the process would exit here; let the thread end)
    late.join(5)
