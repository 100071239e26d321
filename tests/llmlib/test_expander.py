"""The scaffolding query expander under LoadGen: accuracy gain of majority vote on the math
benchmark (dummy oracle backend), its cost figures, failures counted, and spec parsing."""

from __future__ import annotations

import pytest

from llmlib.cli import resolve_for
from llmlib.errors import ConfigError
from llmlib.expander import parse_scaffolding
from llmlib.harness import run_scenario

FAST = {"show_progress": "false", "warmup_queries": "0", "dummy_zero_latency": "true", "min_duration_ms": "0",
        "offline_expected_qps": "1", "min_query_count": "200"}


def run(tmp_path, scenario="Offline", **overrides):
    cli = dict(FAST, results_dir=str(tmp_path), **{k: str(v) for k, v in overrides.items()})
    config, benchmark = resolve_for(cli, "math-tiny", scenario, env={})
    return run_scenario(config, benchmark, scenario)


@pytest.mark.loadgen
def test_majority_vote_of_8_beats_one_sample(tmp_path):
    single = run(tmp_path / "one", scaffolding="native")
    vote = run(tmp_path / "vote", scaffolding="majority_vote:samples=8")
    for o in (single, vote):
        assert o.ok and o.issued == o.completed == 200
    assert 35 <= single.scaffolding["accuracy"] <= 65  # the oracle is right half of the time
    assert vote.scaffolding["accuracy"] >= single.scaffolding["accuracy"] + 20
    assert single.scaffolding["sub_requests_per_sample"] == 1
    assert vote.scaffolding["sub_requests_per_sample"] == 8
    assert vote.scaffolding["generated_tokens_per_sample"] > 6 * single.scaffolding["generated_tokens_per_sample"]
    text = (tmp_path / "vote" / "local" / "math-tiny" / "Offline" / "performance" / "summary.txt").read_text()
    assert "majority_vote" in text and "answer accuracy" in text


@pytest.mark.loadgen
def test_expander_in_server_is_valid_and_defines_ttft(tmp_path):
    o = run(tmp_path, "Server", scaffolding="majority_vote:samples=4", dummy_zero_latency="false",
            dummy_ttft_ms=5, dummy_tpot_ms=0.5, server_target_qps=200, min_query_count=500, min_duration_ms=500)
    assert o.ok and o.issued == o.completed and o.validity == "VALID", o.loadgen
    assert o.loadgen["ttft_p99_ns"] > 5e6  # the answer exists only after the vote: TTFT >= one generation


@pytest.mark.loadgen
def test_a_failing_backend_fails_samples_not_the_run(tmp_path):
    o = run(tmp_path, scaffolding="majority_vote:samples=3", dummy_fail_rate=0.2)
    assert o.issued == o.completed + o.failed and o.lost == 0
    assert o.failed > 0 and not o.ok


@pytest.mark.parametrize("spec, expected", [
    ("native", ("native", {})),
    ("majority_vote", ("majority_vote", {"samples": 8})),
    ("majority_vote:samples=16", ("majority_vote", {"samples": 16})),
    ("token_budget:budget=300,batch=4", ("token_budget", {"budget": 300, "batch": 4})),
])
def test_parse_scaffolding(spec, expected):
    assert parse_scaffolding(spec) == expected


@pytest.mark.parametrize("spec, match", [
    ("majority_vot", "unknown method 'majority_vot'"),
    ("majority_vote:sample=8", "'sample=8' is not one of samples=<int>"),
    ("majority_vote:samples=x", "is not a int"),
    ("majority_vote:samples=0", "must be >= 1"),
])
def test_bad_scaffolding_specs_name_the_problem(spec, match):
    with pytest.raises(ConfigError, match=match):
        parse_scaffolding(spec)


@pytest.mark.loadgen
def test_dynasor_runs_through_loadgen_on_a_streaming_core(tmp_path):
    """The dummy core streams chunks to the stream task, so probes interleave with the reasoning and a
    certain answer cancels it (early exit); the run is VALID and every sample is accounted for."""
    o = run(tmp_path, "Server", scaffolding="dynasor:interval=4,certainty=1,probe_tokens=40",
            dummy_zero_latency="false", dummy_ttft_ms=2, dummy_tpot_ms=1, server_target_qps=20,
            min_query_count=100, min_duration_ms=500, dummy_oracle_accuracy=1.0)
    assert o.ok and o.issued == o.completed and o.lost == 0, (o.errors, o.loadgen)
    assert o.scaffolding["method"] == "dynasor"
    # the stream plus a probe after its first 4 tokens: chunks reached the stream task (with a first token
    # and the whole output only, a 4-token step would wait for the end and no probe would run)
    assert o.scaffolding["sub_requests_per_sample"] >= 2
    assert o.scaffolding["accuracy"] >= 95  # the oracle is always right: probes agree
    assert o.token_stats and o.token_stats["requests"] >= 100  # the streams' inter-token statistics
    text = (tmp_path / "local" / "math-tiny" / "Server" / "performance" / "summary.txt").read_text()
    assert "inter-token latency" in text


def test_dynasor_needs_a_tokenizer():
    from llmlib.expander import build_controller

    assert parse_scaffolding("dynasor:interval=8") == ("dynasor", {"interval": 8, "certainty": 3,
                                                                   "probe_tokens": 16})
    with pytest.raises(ConfigError, match="dynasor needs a tokenizer"):
        build_controller("dynasor", {"interval": 8, "certainty": 3, "probe_tokens": 16}, {}, None)
