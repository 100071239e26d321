"""Tests for llmlib.loadgen_log against published MLPerf result logs and logs made here by the installed LoadGen.

The fixtures are one closed-division llama2-70b-99 submission (Offline and Server performance runs).
"""

from __future__ import annotations

import array
import json
import re
from pathlib import Path

import pytest

from llmlib.errors import HarnessError
from llmlib.loadgen_log import LoadgenLogError, LoadgenResult, parse_detail_log, run_scenario_of, summarize

FIXTURES = Path(__file__).resolve().parents[2] / ".." / "shared" / "fixtures" / "mlperf-results-llama2-70b-99"
needs_fixtures = pytest.mark.skipif(
    not FIXTURES.is_dir(), reason=f"published MLPerf result fixtures not found at {FIXTURES}"
)


def summary_field(summary: str, label: str) -> str:
    """The value after `label :` in mlperf_log_summary.txt (first occurrence)."""
    match = re.search(rf"^[ \t]*{re.escape(label)}\s*:\s*(.+)$", summary, flags=re.MULTILINE)
    assert match, f"{label!r} not in summary"
    return match.group(1).strip()


# -- published logs ---------------------------------------------------------------------------------


@needs_fixtures
def test_offline_fixture():
    run = FIXTURES / "Offline" / "performance" / "run_1"
    detail = parse_detail_log(run / "mlperf_log_detail.txt")
    assert detail["effective_scenario"] == "Offline"
    assert detail["result_validity"] == "VALID"
    assert len(detail["warnings"]) == 2 and detail["errors"] == []
    assert all(w["metadata"]["is_warning"] for w in detail["warnings"])
    # a repeated key keeps its last value
    assert detail["generic_message"] == "Ending naturally: Minimum query count and test duration met."

    result = summarize(detail)
    assert result.scenario == "Offline" and result.mode == "PerformanceOnly"
    assert result.validity == "VALID" and result.is_valid
    assert result.result_samples_per_second == 92.1544
    assert result.result_tokens_per_second == 27803.9
    assert result.result_scheduled_samples_per_second is None
    assert result.ttft_p99_ns is None and result.tpot_p99_ns is None
    assert result.ttft_limit_ns is None and result.tpot_limit_ns is None
    assert result.query_count == 1
    assert result.completed_sample_count == 245760  # one query of 10 x 24576 samples
    assert result.min_duration_ms == 2400000
    assert (result.min_duration_met, result.min_queries_met, result.early_stopping_met) == (True, True, True)
    assert result.perf_constraints_met is None  # Offline has no latency constraint
    assert result.early_stopping == {}
    assert result.invalid_reasons == ()
    assert result.num_errors == 0 and result.errors == ()
    assert len(result.warnings) == 2 and result.warnings[0].startswith("warning_generic_message: Logging")

    summary = (run / "mlperf_log_summary.txt").read_text()
    assert summary_field(summary, "Result is") == result.validity
    assert float(summary_field(summary, "Samples per second")) == result.result_samples_per_second
    assert float(summary_field(summary, "Tokens per second")) == result.result_tokens_per_second


@needs_fixtures
def test_server_fixture():
    run = FIXTURES / "Server" / "performance" / "run_1"
    result = summarize(parse_detail_log(run))  # a directory is accepted too
    assert result.scenario == "Server" and result.validity == "VALID"
    assert result.result_samples_per_second == 81.6768  # result_completed_samples_per_sec
    assert result.result_scheduled_samples_per_second == 83.9006
    assert result.result_tokens_per_second == 24593.8  # result_completed_tokens_per_second
    assert result.ttft_p99_ns == 1914647645
    assert result.tpot_p99_ns == 193380124
    assert result.latency_p99_ns == 136069232834
    assert (result.ttft_limit_ns, result.tpot_limit_ns) == (2_000_000_000, 200_000_000)
    assert result.ttft_p99_ns < result.ttft_limit_ns and result.tpot_p99_ns < result.tpot_limit_ns
    assert result.target_qps == 83.5
    assert result.query_count == result.completed_sample_count == 73728
    assert result.perf_constraints_met is True
    assert result.early_stopping == {"ttft_result": "* Run successful.", "tpot_result": "* Run successful."}
    assert result.invalid_reasons == ()

    summary = (run / "mlperf_log_summary.txt").read_text()
    assert summary_field(summary, "Result is") == "VALID"
    assert float(summary_field(summary, "Completed samples per second")) == round(
        result.result_samples_per_second, 2
    )
    assert float(summary_field(summary, "Scheduled samples per second")) == round(
        result.result_scheduled_samples_per_second, 2
    )
    assert int(summary_field(summary, "99.00 percentile first token latency (ns)")) == result.ttft_p99_ns
    assert int(summary_field(summary, "99.00 percentile time to output token (ns)")) == result.tpot_p99_ns
    assert int(summary_field(summary, "ttft_latency (ns)")) == result.ttft_limit_ns


@needs_fixtures
def test_accuracy_mode_log_has_no_performance_result():
    result = summarize(parse_detail_log(FIXTURES / "Offline" / "accuracy"))
    assert result.mode == "AccuracyOnly"
    assert result.validity is None and result.result_samples_per_second is None
    assert result.invalid_reasons == ()


# -- error handling and hand-made logs ----------------------------------------------------------------


def mllog(key, value, *, error=False, warning=False) -> str:
    entry = {"key": key, "value": value, "metadata": {"is_error": error, "is_warning": warning}}
    return ":::MLLOG " + json.dumps(entry)


def test_missing_file_is_a_harness_error_naming_the_path(tmp_path):
    missing = tmp_path / "nope" / "mlperf_log_detail.txt"
    with pytest.raises(LoadgenLogError, match=re.escape(str(missing))) as info:
        parse_detail_log(missing)
    assert isinstance(info.value, HarnessError)
    assert isinstance(info.value.__cause__, FileNotFoundError)


def test_directory_without_log_names_the_expected_file(tmp_path):
    with pytest.raises(LoadgenLogError, match=re.escape(str(tmp_path / "mlperf_log_detail.txt"))):
        parse_detail_log(tmp_path)


def test_malformed_line_names_file_and_line(tmp_path):
    path = tmp_path / "mlperf_log_detail.txt"
    path.write_text(mllog("a", 1) + "\n:::MLLOG {not json\n")
    with pytest.raises(LoadgenLogError, match=re.escape(f"{path}:2: expected ':::MLLOG {{json}}'")):
        parse_detail_log(path)


def test_file_without_entries_is_rejected(tmp_path):
    path = tmp_path / "mlperf_log_detail.txt"
    path.write_text("hello\n")
    with pytest.raises(LoadgenLogError, match="no ':::MLLOG' entries"):
        parse_detail_log(path)


def test_invalid_server_run_explains_itself(tmp_path):
    path = tmp_path / "mlperf_log_detail.txt"
    lines = [
        mllog("effective_scenario", "Server"),
        mllog("effective_test_mode", "PerformanceOnly"),
        "some stray line that is not an MLLOG entry",
        mllog("requested_server_ttft_latency", 2_000_000_000),
        mllog("requested_server_tpot_latency", 200_000_000),
        mllog("effective_min_query_count", 100),
        mllog("error_invalid_test_settings", "something LoadGen disliked", error=True),
        mllog("result_validity", "INVALID"),
        mllog("result_perf_constraints_met", False),
        mllog("result_min_duration_met", True),
        mllog("result_min_queries_met", False),
        mllog("early_stopping_met", True),
        mllog("result_first_token_99.00_percentile_latency_ns", 2_500_000_000),
        mllog("result_time_per_output_token_99.00_percentile_ns", 150_000_000),
        mllog("result_completed_samples_per_sec", 3.5),
        mllog("num_errors", 1),
    ]
    path.write_text("\n".join(lines) + "\n")
    result = summarize(parse_detail_log(path))
    assert result.validity == "INVALID" and not result.is_valid
    assert result.result_samples_per_second == 3.5
    assert result.errors == ("error_invalid_test_settings: something LoadGen disliked",)
    reasons = " | ".join(result.invalid_reasons)
    assert "min query count not met (min_query_count=100)" in reasons
    assert "performance constraints not met (p99 TTFT 2500.000 ms > limit 2000.000 ms)" in reasons
    assert "TPOT" not in reasons  # TPOT stayed under its limit
    assert "1 error(s) logged" in reasons


def test_invalid_without_any_flag_still_says_so():
    result = summarize({"effective_scenario": "Offline", "result_validity": "INVALID"})
    assert result.invalid_reasons == ("LoadGen marked the run INVALID without logging a reason",)


# -- the harness scenario: Interactive is logged by LoadGen as Server; SingleStream ---------------------


SERVER_DETAIL = {"effective_scenario": "Server", "result_validity": "VALID", "result_completed_samples_per_sec": 9.5,
                 "result_first_token_99.00_percentile_latency_ns": 300_000_000}


def test_an_interactive_run_is_interactive_with_loadgens_server_kept_apart():
    result = summarize(dict(SERVER_DETAIL), "Interactive")
    assert result.scenario == "Interactive" and result.loadgen_scenario == "Server"
    assert result.result_samples_per_second == 9.5 and result.ttft_p99_ns == 300_000_000  # read as Server
    plain = summarize(dict(SERVER_DETAIL))
    assert plain.scenario == plain.loadgen_scenario == "Server"


@pytest.mark.parametrize("scenario, logged, message", [
    ("Interactive", "Offline", "LoadGen logs a run of scenario Interactive as Server; this log says Offline"),
    ("SingleStream", "Server", "LoadGen logs a run of scenario SingleStream as SingleStream; this log says Server"),
    ("MultiStream", "Server", "scenario 'MultiStream': expected one of Offline, Server, Interactive, SingleStream"),
])
def test_a_scenario_that_disagrees_with_the_log_is_an_error(scenario, logged, message):
    with pytest.raises(LoadgenLogError, match=re.escape(message)):
        summarize({"effective_scenario": logged}, scenario)


def test_single_stream_figures_are_the_p90_latencies():
    detail = {"effective_scenario": "SingleStream", "result_validity": "VALID",
              "result_qps_with_loadgen_overhead": 20.0, "result_completed_tokens_per_second": 600.0,
              "result_90.00_percentile_latency_ns": 45_000_000, "early_stopping_latency_ss": 44_000_000,
              "result_first_token_90.00_percentile_latency_ns": 5_000_000,
              "result_time_per_output_token_90.00_percentile_ns": 1_000_000,
              "result_samples_per_second": 999.0}  # an Offline key: never read for SingleStream
    result = summarize(detail, "SingleStream")
    assert (result.scenario, result.loadgen_scenario) == ("SingleStream", "SingleStream")
    assert (result.result_samples_per_second, result.result_tokens_per_second) == (20.0, 600.0)
    assert (result.latency_p90_ns, result.early_stopping_latency_ns) == (45_000_000, 44_000_000)
    assert (result.ttft_p90_ns, result.tpot_p90_ns) == (5_000_000, 1_000_000)
    assert summarize({**detail, "effective_scenario": "Offline"}).early_stopping_latency_ns is None


def test_run_scenario_of_reads_the_summary_then_the_folder(tmp_path):
    run = tmp_path / "local" / "llama3.1-8b" / "Interactive" / "performance"
    run.mkdir(parents=True)
    (run / "mlperf_log_detail.txt").write_text(mllog("effective_scenario", "Server") + "\n")
    assert run_scenario_of(run / "mlperf_log_detail.txt") == "Interactive"  # from the folder
    staged = tmp_path / "closed" / "org" / "results" / "sys" / "deepseek-r1" / "Interactive" / "performance" / "run_1"
    staged.mkdir(parents=True)
    assert run_scenario_of(staged) == "Interactive"
    other = tmp_path / "anywhere"
    other.mkdir()
    assert run_scenario_of(other) is None
    (other / "summary.json").write_text(json.dumps({"scenario": "Interactive"}))
    assert run_scenario_of(other) == "Interactive"  # summary.json wins
    (run / "summary.json").write_text("{broken")
    assert run_scenario_of(run) == "Interactive"


# -- logs made now by the installed LoadGen ------------------------------------------------------------


def run_loadgen(outdir: Path, scenario: str) -> None:
    """A tiny inline SUT: every sample completes (first token, then 4 tokens) inside issue_queries."""
    lg = pytest.importorskip("mlperf_loadgen")
    tokens = array.array("I", [11, 12, 13, 14])
    address, _ = tokens.buffer_info()
    item = tokens.itemsize

    def issue(samples):
        for sample in samples:
            lg.FirstTokenComplete([lg.QuerySampleResponse(sample.id, address, item, 1)])
            lg.QuerySamplesComplete([lg.QuerySampleResponse(sample.id, address, item * 4, 4)])

    sut = lg.ConstructSUT(issue, lambda: None)
    qsl = lg.ConstructQSL(64, 64, lambda indices: None, lambda indices: None)
    settings = lg.TestSettings()
    settings.mode = lg.TestMode.PerformanceOnly
    settings.use_token_latencies = True
    settings.min_duration_ms = 1000
    settings.min_query_count = 100
    if scenario == "Server":
        settings.scenario = lg.TestScenario.Server
        settings.server_target_qps = 200
        settings.ttft_latency = 2_000_000_000
        settings.tpot_latency = 200_000_000
    else:  # an Offline run sized to finish far under min_duration: INVALID on purpose
        settings.scenario = lg.TestScenario.Offline
        settings.offline_expected_qps = 100
    outdir.mkdir(parents=True)
    output = lg.LogOutputSettings()
    output.outdir = str(outdir)
    output.copy_summary_to_stdout = False
    log_settings = lg.LogSettings()
    log_settings.log_output = output
    try:
        lg.StartTestWithLogSettings(sut, qsl, settings, log_settings)
    finally:
        lg.DestroyQSL(qsl)
        lg.DestroySUT(sut)


@pytest.fixture(scope="module")
def fresh_logs(tmp_path_factory):
    root = tmp_path_factory.mktemp("loadgen")
    run_loadgen(root / "server", "Server")
    run_loadgen(root / "offline", "Offline")
    return root


def test_fresh_server_log(fresh_logs):
    run = fresh_logs / "server"
    detail = parse_detail_log(run)
    assert detail["loadgen_version"]
    result = summarize(detail)
    assert result.scenario == "Server" and result.mode == "PerformanceOnly"
    assert result.validity in ("VALID", "INVALID")
    assert result.target_qps == 200.0
    assert result.query_count >= 100 and result.completed_sample_count == result.query_count
    assert (result.ttft_limit_ns, result.tpot_limit_ns) == (2_000_000_000, 200_000_000)
    assert 0 < result.ttft_p99_ns < result.ttft_limit_ns
    assert 0 < result.tpot_p99_ns < result.tpot_limit_ns
    assert result.result_samples_per_second > 0 and result.result_scheduled_samples_per_second > 0
    # 4 tokens per sample
    assert result.result_tokens_per_second == pytest.approx(4 * result.result_samples_per_second, rel=0.01)
    assert result.min_duration_met is True and result.min_queries_met is True
    assert result.perf_constraints_met is True
    assert isinstance(result.early_stopping_met, bool)
    assert result.is_valid == (result.invalid_reasons == ())
    if result.early_stopping_met is False:  # 1 s of queries can be too few for TPOT early stopping
        assert any(r.startswith("early stopping not satisfied") for r in result.invalid_reasons)

    summary = (run / "mlperf_log_summary.txt").read_text()
    assert summary_field(summary, "Result is") == result.validity
    assert summary_field(summary, "Scenario") == "Server"
    assert float(summary_field(summary, "Completed samples per second")) == pytest.approx(
        result.result_samples_per_second, abs=0.01
    )


def test_fresh_offline_log_is_invalid_for_min_duration(fresh_logs):
    run = fresh_logs / "offline"
    result = summarize(parse_detail_log(run))
    assert isinstance(result, LoadgenResult)
    assert result.scenario == "Offline" and result.validity == "INVALID"
    assert result.min_duration_met is False
    assert result.query_count == 1 and result.completed_sample_count >= 100
    assert result.result_tokens_per_second == pytest.approx(4 * result.result_samples_per_second, rel=0.01)
    assert result.invalid_reasons[0] == "min duration not met (min_duration_ms=1000)"
    summary = (run / "mlperf_log_summary.txt").read_text()
    assert summary_field(summary, "Result is") == "INVALID"
    assert summary_field(summary, "Min duration satisfied") == "NO"
