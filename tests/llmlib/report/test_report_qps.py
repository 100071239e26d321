"""QPS calibration and peak search: the search on a known boundary, the probe verdict from the backlog,
user.conf reading, and end to end on the dummy core (a known capacity: batch limit / time per request)
and the main command with no hand-set QPS."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from llmlib.benchmarks import list_benchmarks, load_benchmark
from llmlib.cli import resolve_for
from llmlib.errors import ConfigError
from llmlib.report.qps import (
    AUTO_PROBE_MS,
    BACKLOG_GROWTH_LIMIT,
    MAX_PROBES,
    Probe,
    ProbeError,
    auto_choice,
    auto_probe_ms,
    auto_target_qps,
    backlog_growth,
    conf_value,
    judge_probe,
    prepare,
    probe_argv,
    search_peak,
    sustained_qps,
)

REPO = Path(__file__).resolve().parents[3]


def _fake_probe(capacity: float, calls: list):
    def probe(q: float) -> Probe:
        calls.append(q)
        ok = q <= capacity
        return Probe(target_qps=q, passed=ok, why="", achieved_qps=q if ok else capacity * 0.98,
                     ttft_p99_ms=None, tpot_p99_ms=None, backlog_growth=0.0, folder="")
    return probe


@pytest.mark.parametrize("capacity,start", [(137.0, 15.0), (3.3, 15.0), (5000.0, 1.0), (15.0, 15.0)])
def test_search_brackets_then_bisects_to_the_boundary(capacity, start):
    calls: list[float] = []
    peak, probes = search_peak(_fake_probe(capacity, calls), start, tolerance=0.02)
    assert peak is not None and peak <= capacity
    failed_above = min(p.target_qps for p in probes if not p.passed)
    assert failed_above / peak <= 1.02 and failed_above > capacity
    assert len(probes) == len(calls) <= MAX_PROBES


def test_search_with_nothing_passing_returns_none():
    peak, probes = search_peak(lambda q: Probe(q, False, "broken", None, None, None, None, ""), 10.0,
                               tolerance=0.02, max_probes=6)
    assert peak is None and len(probes) == 6
    assert [p.target_qps for p in probes] == [10.0, 2.5, 0.625, 0.15625, 0.0390625, 0.009765625]


def test_search_stops_starting_probes_once_out_of_time():
    """The auto target's search: the first probe always runs, none starts after the budget."""
    calls: list[float] = []
    budget = iter([False, True])
    peak, probes = search_peak(_fake_probe(3.3, calls), 4.0, tolerance=0.25, out_of_time=lambda: next(budget))
    assert calls == [4.0, 3.3 * 0.98 * (1 - 0.25 / 2)] and peak == calls[1] and len(probes) == 2
    calls.clear()
    search_peak(_fake_probe(20, calls), 4.0, tolerance=0.25, growth=2.0, max_probes=4)
    assert calls[:3] == [4.0, 8.0, 16.0]  # the auto search steps up by 2
    calls.clear()
    peak, probes = search_peak(_fake_probe(3.3, calls), 4.0, tolerance=0.25, out_of_time=lambda: True)
    assert calls == [4.0] and peak is None  # nothing passed: the caller says so (no silent target)


def _probe(q: float, passed: bool, achieved: float | None) -> Probe:
    return Probe(target_qps=q, passed=passed, why="", achieved_qps=achieved, ttft_p99_ms=None, tpot_p99_ms=None,
                 backlog_growth=None, folder="")


def test_the_sustained_qps_is_the_lowest_capacity_seen():
    """The highest passing probe, unless a probe that fell behind completed fewer samples/s than that (the
    capacity of a shared machine moves; a long run meets its lowest)."""
    assert sustained_qps(10.37, [_probe(4, True, 4.06), _probe(16, False, 11.9), _probe(10.37, True, 9.9)]) == 10.37
    assert sustained_qps(10.37, [_probe(16, False, 11.9), _probe(10.37, True, 9.9),
                                 _probe(14.8, False, 8.2)]) == 8.2
    # a failure by latency alone (it completed at its rate) says nothing about capacity, nor one whose
    # requests timed out (transformers serve swamped at 64 QPS: 48 of 320 completed, 1.05/s)
    timed_out = _probe(64, False, 1.05)
    timed_out.failed = 272
    assert sustained_qps(5.0, [_probe(6, False, 6.0), _probe(7, False, None), timed_out]) == 5.0
    assert auto_target_qps(8.2, 0.5) == pytest.approx(4.1)
    for bad in ((0.0, 0.5), (8.2, 0.0), (8.2, 1.5)):
        with pytest.raises(ValueError):
            auto_target_qps(*bad)


def test_probe_length_is_a_sixth_of_the_budget_within_bounds():
    assert auto_probe_ms(30) == 5000
    assert auto_probe_ms(5) == AUTO_PROBE_MS[0] and auto_probe_ms(600) == AUTO_PROBE_MS[1]


@pytest.mark.parametrize("given, performance, conf, perf, expected", [
    (False, True, None, None, ("measure", None)),          # the benchmark's default, nothing measured
    (False, True, "15", None, ("user.conf", None)),        # a user.conf target wins over a default auto
    (True, True, "15", None, ("measure", None)),           # ... never over the user's own auto
    (False, False, None, "2.5", ("performance run", 2.5)),  # accuracy / audit: the performance run's choice
    (True, False, None, "2.5", ("performance run", 2.5)),
    (True, False, None, "junk", ("measure", None)),
    (False, True, None, "2.5", ("measure", None)),         # a performance run measures again
])
def test_where_an_auto_target_comes_from(given, performance, conf, perf, expected):
    assert auto_choice(given=given, performance=performance, user_conf_qps=conf, performance_run_qps=perf) == expected


def test_only_the_projects_own_benchmarks_default_to_auto(tmp_path):
    """Real benchmarks' targets are the submitter's: none declares auto; tiny does."""
    autos = {name for name in list_benchmarks()
             if load_benchmark(name).harness.get("server_target_qps") == "auto"}
    assert "tiny" in autos
    assert all(load_benchmark(name).every_round for name in autos), autos
    real = (REPO / "configs" / "benchmarks" / "llama3.1-8b.yaml").read_text()
    bad = tmp_path / "llama3.1-8b.yaml"
    bad.write_text(real.rstrip("\n") + "\nharness:\n  server_target_qps: auto\n" if "\nharness:" not in real
                   else real.replace("\nharness:\n", "\nharness:\n  server_target_qps: auto\n"))
    with pytest.raises(ConfigError, match="harness.server_target_qps.*auto is for the project's own"):
        load_benchmark("llama3.1-8b", configs_dir=tmp_path)


def test_tiny_is_auto_on_an_endpoint_and_the_hf_cores_measured_15_qps_on_hf():
    """The hf core's default run keeps its target (configs/systems/local.yaml); any other core gets auto."""
    for scenario in ("Server", "Interactive"):
        hf, _ = resolve_for({}, "tiny", scenario, env={})
        assert hf.core_type == "hf" and hf.server_target_qps == 15.0, hf.source("server_target_qps")
        ep, _ = resolve_for({"core_type": "trtllm_endpoint", "trtllm_server_urls": "127.0.0.1:9"}, "tiny", scenario,
                            env={})
        assert ep.server_target_qps == "auto" and ep.source("server_target_qps") == "benchmark tiny"
    given, _ = resolve_for({"server_target_qps": "AUTO"}, "tiny", "Server", env={})
    assert given.server_target_qps == "auto" and given.source("server_target_qps") == "command line"


def test_a_target_that_is_neither_a_number_nor_auto_is_a_one_line_error():
    with pytest.raises(ConfigError) as err:
        resolve_for({"server_target_qps": "fast"}, "tiny", "Server", env={})
    assert str(err.value) == ("command line: --server_target_qps='fast' is not a valid number (expected a number "
                              "or auto, got 'fast')")
    proc = subprocess.run([sys.executable, "-m", "llmlib", "--benchmarks=tiny", "--scenarios=Server",
                           "--server_target_qps=fast"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert "--server_target_qps='fast'" in proc.stderr and "Traceback" not in proc.stderr


def test_prepare_lets_a_user_conf_target_win_over_the_default_auto(tmp_path):
    conf = tmp_path / "user.conf"
    conf.write_text("tiny.Server.target_qps = 3.5\ntiny.Server.min_query_count = 500\n")
    cli = {"core_type": "trtllm_endpoint", "trtllm_server_urls": "127.0.0.1:9", "user_conf": str(conf),
           "results_dir": str(tmp_path / "results")}
    config, benchmark = resolve_for(cli, "tiny", "Server", env={})
    assert config.server_target_qps == "auto"
    chosen, notes = prepare(config, benchmark, "Server", [])
    assert chosen.server_target_qps is None  # LoadGen reads the user.conf's 3.5
    assert notes == [f"target QPS 3.5 from {conf} (the benchmark's default auto yields to a measured target)"]
    assert not (tmp_path / "results").exists()  # nothing measured


@pytest.mark.parametrize("core", [{}, {"core_type": "trtllm_endpoint", "trtllm_server_urls": "127.0.0.1:9"}])
def test_a_number_is_never_replaced_by_auto(tmp_path, core):
    config, benchmark = resolve_for({**core, "server_target_qps": "3", "results_dir": str(tmp_path)}, "tiny",
                                    "Server", env={})
    chosen, notes = prepare(config, benchmark, "Server", [])
    assert chosen.server_target_qps == 3.0 and chosen.source("server_target_qps") == "command line" and notes == []
    assert not any(tmp_path.iterdir())  # no probe ran


def test_an_accuracy_run_takes_the_target_its_performance_run_chose(tmp_path):
    cli = {"core_type": "trtllm_endpoint", "trtllm_server_urls": "127.0.0.1:9", "results_dir": str(tmp_path),
           "test_mode": "AccuracyOnly"}
    config, benchmark = resolve_for(cli, "tiny", "Server", env={})
    perf = tmp_path / "local" / "tiny" / "Server" / "performance"
    perf.mkdir(parents=True)
    (perf / "user.conf").write_text("tiny.Server.min_query_count = 500\n# --- chosen by the harness ---\n"
                                    "tiny.Server.target_qps = 2.75\n")
    chosen, notes = prepare(config, benchmark, "Server", [])
    assert chosen.server_target_qps == 2.75 and "performance run chose" in notes[0]


def test_auto_offline_qps_on_a_compliance_run_is_a_clear_error(tmp_path):
    config, benchmark = resolve_for({"offline_expected_qps": "auto", "test_mode": "AccuracyOnly",
                                     "results_dir": str(tmp_path)}, "tiny", "Offline", env={})
    with pytest.raises(ProbeError, match="--offline_expected_qps=auto calibrates a performance run only"):
        prepare(config, benchmark, "Offline", [])


def test_auto_applies_to_its_own_scenario_only(tmp_path):
    """--server_target_qps=auto with Offline (and --offline_expected_qps=auto with Server) is set aside."""
    config, benchmark = resolve_for({"server_target_qps": "auto", "calibrate_offline_qps": "never",
                                     "results_dir": str(tmp_path)}, "tiny", "Offline", env={})
    chosen, notes = prepare(config, benchmark, "Offline", [])
    assert chosen.server_target_qps is None and notes == []


def test_the_auto_probes_backlog_must_grow_beyond_arrival_noise():
    """The transformers serve probe of 21 queries at 4 QPS (TTFT p99 97 ms): Poisson arrivals against
    completions a few bins later read as 13.6% growth; its noise floor is 2 / sqrt(21) = 44%."""
    issued = np.array([1, 0, 0, 0, 1, 1, 0, 0, 1, 0, 1, 1, 0, 0, 0, 0, 0, 1, 0, 0, 2, 0, 0, 1, 1, 0, 0, 0, 1, 1, 2,
                       1, 0, 0, 1, 0, 0, 1, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1] + [0] * 10)
    done = np.array([0, 0, 0, 0, 0, 1, 0, 0, 1, 0, 2, 0, 0, 0, 0, 1, 0, 0, 0, 0, 2, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                     1, 0, 1, 1, 2, 0, 1, 0, 0, 0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 1])
    summary = {"ok": True, "loadgen": {"perf_constraints_met": True, "ttft_p99_ns": 9.7e7}, "outdir": "x",
               "stats": _stats(issued, done)}
    assert backlog_growth(summary["stats"]) > BACKLOG_GROWTH_LIMIT
    assert not judge_probe(summary, 4.0).passed  # the peak search's long probes keep the strict limit
    assert judge_probe(summary, 4.0, noise_floor=True).passed
    # a probe of 600 queries that falls behind by 20% still fails with the floor (2 / sqrt(600) = 8%)
    rng = np.random.default_rng(7)
    many = rng.poisson(10, size=60)
    summary["stats"] = _stats(many, np.floor(many * 0.8))
    p = judge_probe(summary, 100.0, noise_floor=True)
    assert not p.passed and "backlog grew" in p.why


def _stats(issued: np.ndarray, completed: np.ndarray, width: float = 0.1) -> dict:
    return {"time_bins": {"width_s": width, "issued": issued.tolist(), "completed": completed.tolist(),
                          "failed": [0] * issued.size}, "achieved_samples_per_s": float(completed.sum()) / 6}


def test_backlog_growth_separates_keeping_up_from_falling_behind():
    rng = np.random.default_rng(5)
    issued = rng.poisson(20, size=60)  # 200/s for 6 s
    kept_up = np.concatenate([[0], issued[:-1]])  # each bin's samples finish in the next one
    assert abs(backlog_growth(_stats(issued, kept_up))) < 0.01
    capped = np.minimum(issued, 18)  # at most 180/s: falls behind by the difference
    growth = backlog_growth(_stats(issued, capped))
    expected = (issued.sum() - capped.sum()) / issued.sum()
    assert expected > 0.1 and growth == pytest.approx(expected, abs=0.03)
    summary = {"ok": True, "loadgen": {"perf_constraints_met": True, "ttft_p99_ns": 5e7}, "outdir": "x",
               "stats": _stats(issued, capped)}
    p = judge_probe(summary, 200.0)
    assert not p.passed and "backlog grew" in p.why and p.backlog_growth > BACKLOG_GROWTH_LIMIT
    summary["stats"] = _stats(issued, kept_up)
    assert judge_probe(summary, 200.0).passed
    summary["loadgen"]["perf_constraints_met"] = False
    assert judge_probe(summary, 200.0).why == "latency constraints not met"
    summary.update(ok=False, failed=3)
    assert judge_probe(summary, 200.0).why.startswith("3 failed")


def test_conf_value_reads_like_loadgen(tmp_path):
    conf = tmp_path / "user.conf"
    conf.write_text("# tiny.Server.target_qps = 1\n*.Server.target_qps = 7\ntiny.Server.target_qps = 15 # hf\n"
                    "tiny.*.target_qps = 9\nother.Offline.target_qps = 3\n")
    assert conf_value(conf, "tiny", "Server", "target_qps") == "15"
    assert conf_value(conf, "tiny", "Offline", "target_qps") == "9"
    assert conf_value(conf, "x", "Server", "target_qps") == "7"
    assert conf_value(conf, "x", "Offline", "target_qps") is None
    assert conf_value(tmp_path / "missing.conf", "tiny", "Server", "target_qps") is None


def test_probe_command_keeps_the_users_flags_and_sets_its_own(tmp_path):
    cmd = probe_argv(["--core_type=dummy", "--server_target_qps=5", "--find_peak_qps=true", "--dummy_max_batch_size=8",
                      "stray"], "tiny", "Interactive", tmp_path, server_target_qps=42)
    assert cmd[:3] == [sys.executable, "-m", "llmlib"]
    args = cmd[3:]
    assert "--core_type=dummy" in args and "--dummy_max_batch_size=8" in args and "stray" not in args
    assert "--server_target_qps=42" in args and "--server_target_qps=5" not in args
    assert "--find_peak_qps=false" in args and "--write_report=false" in args and f"--results_dir={tmp_path}" in args


def _llmlib(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llmlib", "--show_progress=false", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
@pytest.mark.loadgen
@pytest.mark.timeout(900)
def test_find_peak_qps_finds_the_dummy_cores_capacity(tmp_path):
    """32 slots, 20 ms to the first token then 31 x 2 ms: 32 / 0.082 s = 390.2 requests/s."""
    capacity = 32 / (0.020 + 31 * 0.002)
    proc = _llmlib("--benchmarks=tiny", "--scenarios=Server", "--core_type=dummy", f"--results_dir={tmp_path}",
                   "--find_peak_qps=true", "--dummy_max_batch_size=32", "--dummy_output_len=32", "--peak_probe_ms=6000")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = tmp_path / "local" / "tiny" / "Server" / "performance"
    search = json.loads((out / "peak_search.json").read_text())
    peak = search["peak_qps"]
    assert abs(peak - capacity) / capacity <= 0.05, (peak, capacity, search["probes"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["verdict"] == "VALID" and summary["loadgen"]["target_qps"] == pytest.approx(peak, rel=1e-4)
    assert not summary["loadgen"]["errors"]  # the confirming run is clean (no second conf load)
    assert any("peak QPS" in n for n in summary["notes"])
    probes = sorted((out / "peak_search").glob("probe_*"))
    assert len(probes) == len(search["probes"]) >= 3  # every probe kept
    for p in search["probes"]:
        assert Path(p["folder"]).is_dir() and (Path(p["folder"]) / "mlperf_log_detail.txt").is_file()
    assert (out / "peak_search.png").read_bytes()[:4] == b"\x89PNG"
    assert "Peak QPS search" in (out / "report.html").read_text()
    conf = (out / "user.conf").read_text()
    assert float(conf.split("tiny.Server.target_qps = ")[-1].split()[0]) == pytest.approx(peak, rel=1e-5)
    assert "tiny.Server.min_query_count = 500" in conf  # the user.conf the run was given comes first


@pytest.mark.slow
@pytest.mark.loadgen
@pytest.mark.timeout(600)
def test_offline_and_server_valid_on_the_dummy_core_with_no_hand_set_qps(tmp_path):
    proc = _llmlib("--benchmarks=tiny", "--scenarios=Offline,Server", "--core_type=dummy", f"--results_dir={tmp_path}")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for scenario in ("Offline", "Server"):
        s = json.loads((tmp_path / "local" / "tiny" / scenario / "performance" / "summary.json").read_text())
        assert s["verdict"] == "VALID", s["loadgen"]
    offline = tmp_path / "local" / "tiny" / "Offline" / "performance"
    s = json.loads((offline / "summary.json").read_text())
    assert any("calibrated" in n for n in s["notes"])
    assert s["loadgen"]["min_duration_met"] is True
    assert (offline / "calibration").is_dir()
    conf = (offline / "user.conf").read_text()
    chosen = conf.split("# --- chosen by the harness ---\n")[-1].strip()
    assert chosen.startswith("tiny.Offline.target_qps = ")
    assert float(chosen.split(" = ")[1]) == pytest.approx(s["loadgen"]["target_qps"], rel=1e-4)
    assert (tmp_path / "local" / "index.html").is_file()
    assert chosen in (tmp_path / "local" / "user.conf").read_text()  # the chosen values, in one file to keep
    # Server: tiny's default auto (no target measured for the dummy core) chose the target from probes
    server = tmp_path / "local" / "tiny" / "Server" / "performance"
    s = json.loads((server / "summary.json").read_text())
    auto = json.loads((server / "auto_qps.json").read_text())
    assert auto["target_qps"] == pytest.approx(0.5 * auto["sustained_qps"]) and auto["probes"][0]["target_qps"] == 4.0
    assert s["loadgen"]["target_qps"] == pytest.approx(auto["target_qps"], rel=1e-4)
    assert any(n.startswith(f"target QPS {auto['target_qps']:.4g}: auto, 50% of") for n in s["notes"]), s["notes"]
    assert s["issued"] >= 500  # user.conf's min_query_count still applies
    assert (server / "auto_qps.png").read_bytes()[:4] == b"\x89PNG"  # every probe, with the target marked
    assert "Auto target QPS: the probes that chose it" in (server / "report.html").read_text()


@pytest.mark.slow
@pytest.mark.loadgen
@pytest.mark.timeout(1500)
def test_find_peak_qps_on_the_hf_core_gives_a_valid_confirming_run(tmp_path):
    pytest.importorskip("torch")
    proc = _llmlib("--benchmarks=tiny", "--scenarios=Server", f"--results_dir={tmp_path}", "--find_peak_qps=true",
                   "--peak_probe_ms=5000", "--peak_tolerance=0.1", timeout=1400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = tmp_path / "local" / "tiny" / "Server" / "performance"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["core_type"] == "hf" and summary["verdict"] == "VALID", summary["loadgen"]
    assert json.loads((out / "peak_search.json").read_text())["peak_qps"] == pytest.approx(
        summary["loadgen"]["target_qps"], rel=1e-4)  # LoadGen logs the QPS with 6 significant digits
